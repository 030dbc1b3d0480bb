"""The consumer's /healthz, /readyz, /metrics server under hostile clients, in a real consumer.

200 half-sent requests once held 200 threads (a thread per connection, no deadline): here they
must cost no thread, be cut at the request deadline, and never keep a probe from an answer.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import psutil
import pytest

from creditstream.settings import Settings
from tests.helpers import Processes, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REQUEST_TIMEOUT_S = 2.0
HALF_SENT = 200


def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> int:
    """Status of GET http://host:port/path (the error status for 4xx/5xx)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server has closed this connection (EOF or reset)."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def start_consumer(
    make_settings: Callable[..., Settings], processes: Processes, **overrides: object
) -> tuple[subprocess.Popen[bytes], int]:
    """A real `creditstream consume` with its HTTP endpoints on a free port."""
    port = free_port()
    settings = make_settings(http_port=port, http_request_timeout_s=REQUEST_TIMEOUT_S, **overrides)
    process = processes.start(["consume"], settings, "consumer")
    wait_until(lambda: process.poll() is None and _answers(port), timeout=60, message="/healthz up")
    return process, port


@pytest.fixture
def consumer_http(
    make_settings: Callable[..., Settings], processes: Processes
) -> tuple[subprocess.Popen[bytes], int]:
    """A consumer with the default bind address."""
    return start_consumer(make_settings, processes)


def _answers(port: int) -> bool:
    try:
        return http_get("127.0.0.1", port, "/healthz", timeout=1) == 200
    except OSError:
        return False


def test_half_sent_requests_hold_no_threads_and_probes_still_answer(
    consumer_http: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, port = consumer_http
    threads_before = psutil.Process(process.pid).num_threads()
    held: list[socket.socket] = []
    try:
        for _ in range(HALF_SENT):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\n")  # never the blank line
            held.append(sock)
        time.sleep(0.5)
        threads_held = psutil.Process(process.pid).num_threads()
        started = time.monotonic()
        status = http_get("127.0.0.1", port, "/healthz")
        answered_s = time.monotonic() - started
        metrics = http_get("127.0.0.1", port, "/metrics")
        deadline = time.monotonic() + REQUEST_TIMEOUT_S + 10
        while time.monotonic() < deadline and not all(closed_by_peer(s) for s in held):
            time.sleep(0.2)
        still_open = sum(not closed_by_peer(s) for s in held)
    finally:
        for sock in held:
            sock.close()
    assert (status, metrics) == (200, 200)
    assert answered_s < 2.0, f"/healthz took {answered_s:.2f}s with {HALF_SENT} half-sent held"
    assert threads_held - threads_before <= 2, (
        f"{threads_held - threads_before} more threads with {HALF_SENT} half-sent requests"
    )
    assert still_open == 0, f"{still_open} half-sent connections outlived the request deadline"


def test_a_trickled_request_is_cut_at_the_deadline(
    consumer_http: tuple[subprocess.Popen[bytes], int],
) -> None:
    _process, port = consumer_http
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    started = time.monotonic()
    cut = False
    try:
        # NOTE: one byte every 0.2 s: each read succeeds, only a total deadline stops it.
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                cut = True
                break
            if closed_by_peer(sock):
                cut = True
                break
            time.sleep(0.2)
        held_s = time.monotonic() - started
    finally:
        sock.close()
    assert cut, "the trickling client kept its connection for the whole request"
    assert held_s < REQUEST_TIMEOUT_S + 3, f"cut only after {held_s:.1f}s"


def test_binds_loopback_by_default(consumer_http: tuple[subprocess.Popen[bytes], int]) -> None:
    _process, port = consumer_http
    assert http_get("127.0.0.1", port, "/readyz") in (200, 503)
    # NOTE: 127.0.0.2 is another local address: a 0.0.0.0 bind would answer it.
    with pytest.raises(OSError):
        http_get("127.0.0.2", port, "/healthz", timeout=2)


def test_binds_each_address_given_and_no_other(
    make_settings: Callable[..., Settings], processes: Processes
) -> None:
    # NOTE: as the chart does: the pod IP (here 127.0.0.2) and loopback for port-forward.
    _process, port = start_consumer(make_settings, processes, http_host="127.0.0.2, 127.0.0.1")
    assert http_get("127.0.0.2", port, "/healthz") == 200
    assert http_get("127.0.0.1", port, "/healthz") == 200
    with pytest.raises(OSError):
        http_get("127.0.0.3", port, "/healthz", timeout=2)
