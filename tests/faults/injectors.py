"""Fault injectors that are safe on a shared machine: each one touches only its own test's share.

- broker connection loss: `rabbitmqctl close_all_connections`, scoped to the connections whose
  client-provided name ends with the test's queue (creditstream names them
  `creditstream-<component>:<requests_queue>`, see creditstream/broker.py); through the
  management API when it is enabled, else `rabbitmqctl list_connections` / `close_connection`;
- database outage: a database of the test's own, made unavailable with
  `ALTER DATABASE … ALLOW_CONNECTIONS false` + `pg_terminate_backend` (never a server restart);
- broker flow control: the real memory alarm (`set_vm_memory_high_watermark`), held for seconds
  and always restored;
- resident memory of a process tree, sampled (psutil);
- a broker gone for good: a vhost of the test's own, deleted under its clients.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from creditstream.autoscale.queue_depth import management_url_from_amqp
from tests.helpers import AMQP_URL, PG_URL

RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
MANAGEMENT_URL = os.environ.get(
    "CREDITSTREAM_TEST_MANAGEMENT_URL", management_url_from_amqp(AMQP_URL)
)


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """Run rabbitmqctl quietly; skip the test (with the reason) when the CLI cannot be used."""
    try:
        result = subprocess.run(
            [RABBITMQCTL, "-q", *args], capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError:
        pytest.skip("rabbitmqctl not found: fault tests need the broker's CLI on this machine")
    if result.returncode != 0:
        if "erlang cookie" in result.stderr.lower() or "eacces" in result.stderr.lower():
            pytest.skip(f"rabbitmqctl cannot reach the node: {result.stderr.strip()[:300]}")
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


# --- broker connections -------------------------------------------------------------------
_CONNECTION_NAME = re.compile(r'\{"connection_name","([^"]*)"\}')


def _management() -> requests.Session | None:
    """A session on the management API when it answers (fast); None: use rabbitmqctl."""
    session = requests.Session()
    parts = urllib.parse.urlsplit(MANAGEMENT_URL)
    session.auth = (
        urllib.parse.unquote(parts.username or ""),
        urllib.parse.unquote(parts.password or ""),
    )
    try:
        session.get(f"{_management_base()}/api/overview", timeout=5).raise_for_status()
    except requests.RequestException:
        return None
    return session


def _management_base() -> str:
    parts = urllib.parse.urlsplit(MANAGEMENT_URL)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}"


def connections_of(queue: str) -> dict[str, str]:
    """{connection handle: client-provided name} of every creditstream connection on `queue`.

    NOTE: the management API answers in milliseconds (its list lags new connections by up to
    its statistics interval); rabbitmqctl is exact but costs seconds of CPU per call, which on
    a busy 2-core machine outlasts a fault window. The API is used when it answers.
    """
    found = {}
    session = _management()
    if session is not None:
        with session:
            rows = session.get(
                f"{_management_base()}/api/connections?columns=name,client_properties", timeout=10
            ).json()
        for row in rows:
            name = str((row.get("client_properties") or {}).get("connection_name", ""))
            if name.startswith("creditstream-") and name.endswith(f":{queue}"):
                found[f"api:{row['name']}"] = name
        return found
    # NOTE: the tab-separated listing prints pids in the form close_connection accepts
    # (<rabbit@host.N.N.N>); the JSON formatter's #PID<N.N.N> is not accepted back.
    for line in rabbitmqctl("list_connections", "pid", "client_properties").splitlines():
        pid, _, properties = line.partition("\t")
        match = _CONNECTION_NAME.search(properties)
        name = match.group(1) if match else ""
        if name.startswith("creditstream-") and name.endswith(f":{queue}"):
            found[pid] = name
    return found


def close_connections_of(queue: str, reason: str = "fault test") -> list[str]:
    """`close_all_connections`, scoped to one test: close the connections serving `queue`.

    Returns the client-provided names of the connections closed.
    """
    closed = []
    session = _management()
    for handle, name in connections_of(queue).items():
        if handle.startswith("api:") and session is not None:
            quoted = urllib.parse.quote(handle.removeprefix("api:"), safe="")
            response = session.delete(
                f"{_management_base()}/api/connections/{quoted}",
                headers={"X-Reason": reason},
                timeout=10,
            )
            if response.status_code in (200, 204):
                closed.append(name)
            continue
        with contextlib.suppress(RuntimeError):  # it may have gone away by itself meanwhile
            rabbitmqctl("close_connection", handle, reason)
            closed.append(name)
    if session is not None:
        session.close()
    return closed


# --- broker flow control ------------------------------------------------------------------
def current_watermark() -> list[str]:
    """The arguments that restore the node's *configured* vm_memory_high_watermark.

    NOTE: not the value in force now: read while another test's alarm is up (the broker is
    shared by every helper on this machine), that is the alarm itself, and "restoring" it left
    the broker in a memory alarm for good (seen here). The application environment keeps what
    the node was started with; set_vm_memory_high_watermark does not change it.
    """
    value = rabbitmqctl("eval", "application:get_env(rabbit, vm_memory_high_watermark).").strip()
    match = re.fullmatch(r"\{ok,\{absolute,(\d+)\}\}", value)
    if match:
        return ["absolute", match.group(1)]
    match = re.fullmatch(r"\{ok,([0-9.]+)\}", value)
    return [match.group(1)] if match else ["0.4"]  # NOTE: RabbitMQ's default when unset


# Every memory alarm on this machine, whichever worktree's test raises it, takes this lock:
# two overlapping alarms would end at the first restore, or restore each other's alarm.
ALARM_LOCK = Path(tempfile.gettempdir()) / "creditstream-memory-alarm.lock"


@contextlib.contextmanager
def _alarm_lock(timeout_s: float = 300) -> Iterator[None]:
    with ALARM_LOCK.open("a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another memory alarm held {ALARM_LOCK} for {timeout_s:g} s")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def memory_alarm(previous: list[str] | None = None) -> Iterator[None]:
    """Raise the broker's memory alarm (every publishing connection gets connection.blocked).

    NOTE: the alarm is broker-wide: other publishers on this machine pause too. Keep the window
    to seconds; the configured watermark (read now unless given) is always restored, and one
    alarm at a time is raised on this machine (ALARM_LOCK).
    """
    previous = previous or current_watermark()
    with _alarm_lock():
        rabbitmqctl("set_vm_memory_high_watermark", "absolute", "1MB")
        try:
            yield
        finally:
            rabbitmqctl("set_vm_memory_high_watermark", *previous)


# --- database -----------------------------------------------------------------------------
@contextlib.contextmanager
def dedicated_database() -> Iterator[str]:
    """A PostgreSQL database of the test's own (URL yielded); dropped afterwards."""
    name = f"cs_fault_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        pytest.fail(f"cannot create a database at {PG_URL}: {exc} (run `make services`)")
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def database_outage(database_url: str) -> Iterator[int]:
    """Refuse new connections to one database and cut the open ones; yields sessions cut."""
    name = make_url(database_url).database
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            cut = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).scalar_one()
        yield int(cut)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


# --- memory -------------------------------------------------------------------------------
@dataclass
class RssSampler:
    """Samples the resident memory (bytes) of some processes on a thread; keeps each one's peak."""

    pids: dict[str, int]
    interval_s: float = 0.2
    peaks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def add(self, label: str, pid: int) -> None:
        """Start watching one more process."""
        self.pids[label] = pid

    def _sample(self) -> None:
        while not self._stop.is_set():
            for label, pid in list(self.pids.items()):
                with contextlib.suppress(psutil.Error):
                    rss = psutil.Process(pid).memory_info().rss
                    self.peaks[label] = max(self.peaks.get(label, 0), rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def wait_for(predicate: object, timeout: float, interval: float = 0.1) -> bool:
    """Poll a callable until true; False after `timeout` (no test failure, unlike wait_until)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


# --- a broker that goes away for good -----------------------------------------------------
@contextlib.contextmanager
def dedicated_vhost(amqp_url: str = AMQP_URL) -> Iterator[tuple[str, Callable[[], None]]]:
    """A vhost of the test's own: yields its AMQP URL (same user) and a function deleting it.

    Deleting the vhost closes its connections and refuses every new one: to its clients the
    broker is gone for good, while nobody else on the machine notices.
    """
    name = f"cs-gone-{uuid.uuid4().hex[:10]}"
    user = urllib.parse.unquote(urllib.parse.urlsplit(amqp_url).username or "guest")
    rabbitmqctl("add_vhost", name)
    deleted = False

    def delete() -> None:
        nonlocal deleted
        if not deleted:
            rabbitmqctl("delete_vhost", name)
            deleted = True

    try:
        rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        parts = urllib.parse.urlsplit(amqp_url)
        yield urllib.parse.urlunsplit(parts._replace(path="/" + name)), delete
    finally:
        delete()
