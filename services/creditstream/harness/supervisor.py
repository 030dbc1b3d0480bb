"""Keeps `creditstream consume` processes at the count asked for, as a Deployment keeps pods.

Scale-down sends SIGTERM to the newest processes: the consumer stops taking deliveries,
finishes and acks the batch in hand, and exits 0; whatever it had prefetched but not started
goes back to the queue when its channel closes, so no message is lost. A process that exits
while it is still wanted is a crash and is restarted (like `restartPolicy: Always`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from creditstream.harness.processes import Process, ProcessGroup

if TYPE_CHECKING:
    from creditstream.settings import Settings

log = logging.getLogger(__name__)


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
    log_dir: Path
    args: tuple[str, ...] = ("consume",)
    stop_timeout_s: float = 60.0
    restart_backoff_s: float = 1.0
    desired: int = 0
    processes: list[Process] = field(default_factory=list)
    stopping: list[Process] = field(default_factory=list)
    events: list[SupervisorEvent] = field(default_factory=list)
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    _not_before: float = 0.0
    _group: ProcessGroup = field(init=False)

    def __post_init__(self) -> None:
        self._group = ProcessGroup(self.log_dir, self.settings, stop_timeout_s=self.stop_timeout_s)

    @property
    def running(self) -> int:
        """Processes alive and not draining (the Deployment's replicas)."""
        return sum(1 for p in self.processes if p.alive)

    @property
    def starts(self) -> int:
        """Processes started so far (restarts included)."""
        return len(self._group.processes)

    @property
    def draining(self) -> int:
        """Processes told to stop that have not exited yet."""
        return len(self.stopping)

    def _record(self, kind: str, index: int, detail: str) -> None:
        self.events.append(SupervisorEvent(time.monotonic(), kind, index, detail))
        log.info("consumer %d: %s %s", index, kind, detail)

    def _start_one(self) -> Process:
        process = self._group.start(self.args, name="consumer", http=True)
        self._record("started", process.index, f"pid {process.pid} port {process.port}")
        return process

    def _stop_one(self, process: Process) -> None:
        process.terminate()
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
            code = process.poll()
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
            code = process.poll()
            since = process.stopping_since or now
            if code is not None:
                self.stopping.remove(process)
                self.exit_codes.append(code)
                self._record(
                    "drained" if code == 0 else "stopped-with-error",
                    process.index,
                    f"code {code} after {now - since:.1f}s",
                )
            elif now - since > self.stop_timeout_s:
                process.kill()
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

    def alive(self) -> list[Process]:
        """Processes alive now, draining ones included (the ones worth scraping)."""
        return [p for p in self.processes + self.stopping if p.alive]

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
            if process.alive:
                process.kill()
                process.wait(5)
                self._record("killed", process.index, "at shutdown")
        self.reconcile()
        self._group.stop_all(timeout_s=0)  # NOTE: all have exited: this ends what they left

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
