"""Runs `creditstream consume` processes the way a Deployment runs pods, at the count asked for.

Scale-down sends SIGTERM to the newest processes: the consumer stops taking deliveries,
finishes and acks the batch in hand, and exits 0; whatever it had prefetched but not started
goes back to the queue when its channel closes, so no message is lost. A process that exits
while it is still wanted is a crash and is restarted (like `restartPolicy: Always`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import SecretStr

if TYPE_CHECKING:
    from creditstream.settings import Settings

log = logging.getLogger(__name__)


def settings_env(settings: Settings) -> dict[str, str]:
    """Every set field of the settings as CREDITSTREAM_<FIELD> variables (secrets revealed)."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"CREDITSTREAM_{name.upper()}"] = str(value)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ConsumerProcess:
    """One consumer process ("pod") and what the supervisor knows about it."""

    index: int
    port: int
    popen: subprocess.Popen[bytes]
    started_at: float
    log_path: Path | None
    stopping_since: float | None = None

    @property
    def pid(self) -> int:
        """OS process id."""
        return self.popen.pid

    @property
    def metrics_url(self) -> str:
        """Its Prometheus endpoint."""
        return f"http://127.0.0.1:{self.port}/metrics"


@dataclass
class SupervisorEvent:
    """Something the supervisor did or saw (for the dashboard and the run log)."""

    at: float
    kind: str
    index: int
    detail: str


@dataclass
class Supervisor:
    """Keeps `desired` consumer processes alive; scales down by SIGTERM and waits for the drain."""

    settings: Settings
    log_dir: Path | None = None
    command: Sequence[str] = (sys.executable, "-m", "creditstream.cli", "consume")
    extra_env: Mapping[str, str] = field(default_factory=dict)
    stop_timeout_s: float = 60.0
    restart_backoff_s: float = 1.0
    desired: int = 0
    processes: list[ConsumerProcess] = field(default_factory=list)
    stopping: list[ConsumerProcess] = field(default_factory=list)
    events: list[SupervisorEvent] = field(default_factory=list)
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    _next_index: int = 0
    _not_before: float = 0.0
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def running(self) -> int:
        """Processes alive and not draining (the Deployment's replicas)."""
        return sum(1 for p in self.processes if p.popen.poll() is None)

    @property
    def starts(self) -> int:
        """Processes started so far (restarts included)."""
        return self._next_index

    @property
    def draining(self) -> int:
        """Processes told to stop that have not exited yet."""
        return len(self.stopping)

    def _record(self, kind: str, index: int, detail: str) -> None:
        self.events.append(SupervisorEvent(time.monotonic(), kind, index, detail))
        log.info("consumer %d: %s %s", index, kind, detail)

    def _environment(self, port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(settings_env(self.settings))
        env.update(self.extra_env)
        env["CREDITSTREAM_HTTP_PORT"] = str(port)
        env["CREDITSTREAM_HTTP_HOST"] = "127.0.0.1"
        env.setdefault("CREDITSTREAM_LOG_FORMAT", "json")
        return env

    def _start_one(self) -> ConsumerProcess:
        index = self._next_index
        self._next_index += 1
        port = free_port()
        log_path = None
        stdout: int | IO[bytes] = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"consumer-{index:03d}.log"
            handle = log_path.open("ab")
            self._logs.append(handle)
            stdout = handle
        popen = subprocess.Popen(
            list(self.command),
            env=self._environment(port),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # NOTE: own session, so a terminal Ctrl-C reaches only the supervisor, which then
            # stops the consumers in order instead of racing them.
            start_new_session=True,
        )
        process = ConsumerProcess(index, port, popen, time.monotonic(), log_path)
        self._record("started", index, f"pid {popen.pid} port {port}")
        return process

    def _stop_one(self, process: ConsumerProcess) -> None:
        if process.popen.poll() is None:
            process.popen.send_signal(signal.SIGTERM)
        process.stopping_since = time.monotonic()
        self.stopping.append(process)
        self._record("sigterm", process.index, f"pid {process.pid}")

    def scale_to(self, desired: int) -> None:
        """Ask for `desired` processes; reconcile() does the work."""
        if desired < 0:
            raise ValueError("desired replicas must be >= 0")
        self.desired = desired
        self.reconcile()

    def reconcile(self) -> None:
        """Reap exits, restart crashes, start or SIGTERM processes to match `desired`."""
        now = time.monotonic()
        for process in list(self.processes):
            code = process.popen.poll()
            if code is None:
                continue
            self.processes.remove(process)
            self.exit_codes.append(code)
            self._record("crashed" if code != 0 else "exited", process.index, f"code {code}")
            if len(self.processes) < self.desired:
                # NOTE: a crash loop must not fork-bomb the machine: one restart per backoff.
                self.restarts += 1
                self._not_before = now + self.restart_backoff_s
        for process in list(self.stopping):
            code = process.popen.poll()
            if code is not None:
                self.stopping.remove(process)
                self.exit_codes.append(code)
                self._record(
                    "drained" if code == 0 else "stopped-with-error",
                    process.index,
                    f"code {code} after {now - (process.stopping_since or now):.1f}s",
                )
            elif now - (process.stopping_since or now) > self.stop_timeout_s:
                process.popen.kill()
                self._record(
                    "killed",
                    process.index,
                    f"no exit {self.stop_timeout_s:.0f}s after"
                    " SIGTERM (its unacked messages are redelivered)",
                )
                process.stopping_since = now  # reaped on a later pass
        while len(self.processes) > self.desired:
            # NOTE: newest first, like a ReplicaSet prefers the youngest pods on scale-down.
            self._stop_one(self.processes.pop())
        while len(self.processes) < self.desired and now >= self._not_before:
            self.processes.append(self._start_one())

    def metrics_urls(self) -> list[tuple[int, str]]:
        """(index, /metrics URL) of the processes alive now, draining ones included."""
        return [
            (p.index, p.metrics_url)
            for p in self.processes + self.stopping
            if p.popen.poll() is None
        ]

    def shutdown(self, timeout_s: float | None = None) -> None:
        """SIGTERM everything, wait for the drain, kill stragglers."""
        self.desired = 0
        for process in self.processes:
            self._stop_one(process)
        self.processes.clear()
        deadline = time.monotonic() + (self.stop_timeout_s if timeout_s is None else timeout_s)
        while self.stopping and time.monotonic() < deadline:
            self.reconcile()
            time.sleep(0.1)
        for process in self.stopping:
            if process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait(5)
                self._record("killed", process.index, "at shutdown")
        self.reconcile()
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
