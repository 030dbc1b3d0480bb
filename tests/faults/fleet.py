"""A fleet of `creditstream consume` subprocesses whose /metrics are remembered past their death."""

from __future__ import annotations

import signal
import subprocess
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

from creditstream.settings import Settings
from tests.helpers import Processes, free_port, scrape_metric, wait_until

# What a fault test reads from each consumer's /metrics.
WATCHED = (
    "creditstream_redelivered_messages_total",
    "creditstream_duplicate_records_total",
    "creditstream_broker_reconnects_total",
    "creditstream_store_errors_total",
    "creditstream_scoring_failures_total",
    'creditstream_records_total{outcome="scored"}',
    'creditstream_records_total{outcome="rejected"}',
)


@dataclass
class Member:
    """One consumer process and the last metric values read from it."""

    process: subprocess.Popen[bytes]
    port: int
    last: dict[str, float] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        """Still running."""
        return self.process.poll() is None

    @property
    def log(self) -> str:
        """Everything it wrote so far."""
        return Path(self.process.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


@dataclass
class Fleet:
    """Consumers started through the test's Processes (so none outlives the test)."""

    processes: Processes
    settings: Settings
    args: tuple[str, ...] = ()
    members: list[Member] = field(default_factory=list)
    kills: int = 0

    def start(self) -> Member:
        """Start one more consumer with an HTTP port of its own; wait until it serves."""
        port = free_port()
        process = self.processes.start(
            ["consume", "--http-port", str(port), *self.args], self.settings, "consumer"
        )
        member = Member(process, port)
        self.members.append(member)
        wait_until(lambda: self._serving(member), timeout=60, message=f"consumer on :{port}")
        return member

    def _serving(self, member: Member) -> bool:
        assert member.alive, f"consumer exited early:\n{member.log[-3000:]}"
        return self.scrape(member)

    def scrape(self, member: Member) -> bool:
        """Remember the member's current metric values; False if it did not answer."""
        if not member.alive:
            return False
        try:
            member.last = {name: scrape_metric(member.port, name) for name in WATCHED}
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return True

    def scrape_all(self) -> None:
        """Scrape every live member."""
        for member in self.members:
            self.scrape(member)

    def kill(self, member: Member) -> None:
        """SIGKILL: no drain, no ack, no goodbye (what an OOM kill or node loss looks like)."""
        self.scrape(member)
        member.process.send_signal(signal.SIGKILL)
        member.process.wait(timeout=30)
        self.kills += 1

    def live(self) -> list[Member]:
        """Members still running."""
        return [m for m in self.members if m.alive]

    def stop(self) -> list[int]:
        """Final scrape, then SIGTERM every live member; their exit codes."""
        self.scrape_all()
        live = self.live()
        for member in live:
            member.process.send_signal(signal.SIGTERM)
        return [member.process.wait(timeout=60) for member in live]

    def total(self, name: str) -> float:
        """Sum over every member, dead ones included (their last scraped value)."""
        return sum(member.last.get(name, 0.0) for member in self.members)
