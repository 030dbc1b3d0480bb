"""KEDA on this machine: the queue's reading -> the KEDA + HPA rule -> the consumer supervisor.

`LocalKeda.tick()` is one pass of what the cluster does with the chart's ScaledObject: read the
queue the way its rabbitmq triggers do (QueueLength: `messages`; MessageRate: the publish rate
`message_stats.publish_details.rate`), let the rule (KEDA's poll and the HPA's sync,
autoscale/rule.py) compute every trigger's metric and activity and decide the replica count,
and have the supervisor converge the consumer processes to it.

NOTE: both triggers watch the same queue, so one management API reading a tick serves both; in
a cluster each scaler makes its own request to the same endpoint. A reading that fails leaves
every trigger in error: the rule then changes nothing ("metric unavailable"), as KEDA does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from creditstream.autoscale.queue_depth import DepthReader, QueueDepth, QueueDepthError
from creditstream.autoscale.rule import (
    MESSAGE_RATE,
    QUEUE_LENGTH,
    Decision,
    KedaHpaAutoscaler,
    QueueSample,
)
from creditstream.harness.supervisor import Supervisor, SupervisorEvent

log = logging.getLogger(__name__)

__all__ = ["MESSAGE_RATE", "QUEUE_LENGTH", "KedaTick", "LocalKeda", "QueueTrigger"]


class QueueTrigger:
    """The rabbitmq triggers' view of one queue: `messages` and the publish rate, or an error."""

    def __init__(self, reader: DepthReader) -> None:
        self.reader = reader
        self.last: QueueDepth | None = None

    def read(self) -> QueueSample:
        """One reading; fields that cannot be read are None (the rule treats them as errors)."""
        try:
            self.last = self.reader.read()
        except QueueDepthError as exc:
            log.warning("queue depth unavailable: %s", exc)
            self.last = None
            return QueueSample(messages=None, publish_rate=None)
        # NOTE: over amqp (passive declare) there is no publish rate: MessageRate needs http.
        return QueueSample(messages=float(self.last.messages), publish_rate=self.last.publish_rate)

    def close(self) -> None:
        """Close the reader."""
        self.reader.close()


@dataclass(frozen=True)
class KedaTick:
    """What one tick read, decided and did."""

    at: float
    sample: QueueSample
    desired: int
    decisions: tuple[Decision, ...]
    events: tuple[SupervisorEvent, ...]

    @property
    def metrics(self) -> Mapping[str, float | None]:
        """Each trigger's metric as its scaler reports it (None: unavailable)."""
        return {QUEUE_LENGTH: self.sample.messages, MESSAGE_RATE: self.sample.publish_rate}


class LocalKeda:
    """Queue reading -> KEDA + HPA rule -> supervisor, one `tick()` at a time."""

    def __init__(self, rule: KedaHpaAutoscaler, supervisor: Supervisor, trigger: QueueTrigger):
        self.rule = rule
        self.supervisor = supervisor
        self.trigger = trigger
        self.desired = 0

    def tick(self, now: float) -> KedaTick:
        """Read the queue, step the rule at `now` (seconds), scale the supervisor."""
        sample = self.trigger.read()
        self.desired, decisions = self.rule.step(now, sample, self.desired)
        seen = len(self.supervisor.events)
        self.supervisor.scale_to(self.desired)
        return KedaTick(
            now, sample, self.desired, tuple(decisions), tuple(self.supervisor.events[seen:])
        )

    def close(self) -> None:
        """Close the trigger's reader."""
        self.trigger.close()
