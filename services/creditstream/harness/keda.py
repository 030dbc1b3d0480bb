"""KEDA on this machine: trigger metrics -> the KEDA + HPA rule -> the consumer supervisor.

`LocalKeda.tick()` is one pass of what the cluster does with a ScaledObject: read every
trigger's metric, let the rule (KEDA's poll and the HPA's sync, autoscale/rule.py) decide the
replica count, and have the supervisor converge the consumer processes to it.

NOTE: a ScaledObject may carry several triggers; the HPA then computes a replica count per
metric and takes the largest, and KEDA is active while any trigger is. `triggers` is a list
for that reason, but the rule takes one metric today, so LocalKeda accepts exactly one trigger;
a second one (e.g. MessageRate) needs the rule to take a metric per trigger first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from creditstream.autoscale.queue_depth import DepthReader, QueueDepth, QueueDepthError
from creditstream.autoscale.rule import Decision, KedaHpaAutoscaler
from creditstream.harness.supervisor import Supervisor, SupervisorEvent

log = logging.getLogger(__name__)

QUEUE_LENGTH: Final = "QueueLength"


class Trigger(Protocol):
    """One ScaledObject trigger: a name (its KEDA mode) and its metric now."""

    name: str

    def read(self) -> float | None:
        """The metric value now; None when it cannot be read (the rule then waits)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class QueueLengthTrigger:
    """The rabbitmq trigger in QueueLength mode: the depth reader's `messages`."""

    name = QUEUE_LENGTH

    def __init__(self, reader: DepthReader) -> None:
        self.reader = reader
        self.last: QueueDepth | None = None

    def read(self) -> float | None:
        """Ready + unacked (management API) or ready (AMQP), as the reader's source allows."""
        try:
            self.last = self.reader.read()
        except QueueDepthError as exc:
            log.warning("queue depth unavailable: %s", exc)
            self.last = None
            return None
        return float(self.last.messages)

    def close(self) -> None:
        """Close the reader."""
        self.reader.close()


@dataclass(frozen=True)
class KedaTick:
    """What one tick read, decided and did."""

    at: float
    metrics: Mapping[str, float | None]
    desired: int
    decisions: tuple[Decision, ...]
    events: tuple[SupervisorEvent, ...]


class LocalKeda:
    """Trigger metric -> KEDA + HPA rule -> supervisor, one `tick()` at a time."""

    def __init__(
        self, rule: KedaHpaAutoscaler, supervisor: Supervisor, triggers: Sequence[Trigger]
    ) -> None:
        if len(triggers) != 1:
            raise ValueError("the scaling rule takes one metric: give exactly one trigger")
        self.rule = rule
        self.supervisor = supervisor
        self.triggers = tuple(triggers)
        self.desired = 0

    def tick(self, now: float) -> KedaTick:
        """Read the triggers, step the rule at `now` (seconds), scale the supervisor."""
        metrics = {trigger.name: trigger.read() for trigger in self.triggers}
        decisions: list[Decision] = []
        metric = metrics[self.triggers[0].name]
        if metric is not None:
            self.desired, decisions = self.rule.step(now, metric, self.desired)
        seen = len(self.supervisor.events)
        self.supervisor.scale_to(self.desired)
        return KedaTick(
            now, metrics, self.desired, tuple(decisions), tuple(self.supervisor.events[seen:])
        )

    def close(self) -> None:
        """Close the triggers' connections."""
        for trigger in self.triggers:
            trigger.close()
