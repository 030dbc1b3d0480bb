"""A fleet of `creditstream consume` processes whose /metrics are remembered past their death."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from creditstream.harness.metrics import Metrics
from creditstream.harness.processes import Process
from creditstream.settings import Settings
from tests.helpers import Processes, wait_until


@dataclass
class Member:
    """One consumer process; `last` is its last scrape (kept after it died)."""

    process: Process

    @property
    def port(self) -> int | None:
        """Its HTTP port."""
        return self.process.port

    @property
    def alive(self) -> bool:
        """Still running."""
        return self.process.alive

    @property
    def log(self) -> str:
        """Everything it wrote so far."""
        return self.process.log_text()

    @property
    def last(self) -> Metrics:
        """`member.last['name{label="v"}']`: a series of its last scrape (0 when absent)."""
        return self.process.last_metrics


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
        process = self.processes.start(
            ["consume", *self.args], self.settings, "consumer", http=True
        )
        member = Member(process)
        self.members.append(member)
        wait_until(lambda: self._serving(member), timeout=60, message=f"consumer {process.port}")
        return member

    def _serving(self, member: Member) -> bool:
        assert member.alive, f"consumer exited early:\n{member.log[-3000:]}"
        return self.scrape(member)

    def scrape(self, member: Member) -> bool:
        """Remember the member's current metrics; False if it did not answer."""
        return member.process.scrape() is not None

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
        """Final scrape, then SIGTERM every live member (SIGKILL after 60 s); exit codes."""
        self.scrape_all()
        return self.processes.group.stop([m.process for m in self.live()], timeout_s=60)

    def total(self, name: str) -> float:
        """Sum over every member, dead ones included (their last scraped value)."""
        return sum(member.last[name] for member in self.members)
