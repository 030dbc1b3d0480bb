"""Per-stage metrics and the `x-creditstream-trace` header (issue 11)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram

from creditstream.metrics import ConsumerMetrics
from creditstream.topology import SENT_AT_HEADER

_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def now_us() -> int:
    """Wall-clock microseconds (AMQP tables have no float type)."""
    return time.time_ns() // 1000


def trace_of(headers: dict[str, Any] | None) -> dict[str, int]:
    """The trace carried so far: `produce` (the producer's sent-at) and `<stage>.in/out`."""
    headers = headers or {}
    trace = headers.get("x-creditstream-trace")
    out = {k: v for k, v in trace.items() if isinstance(v, int)} if isinstance(trace, dict) else {}
    sent = headers.get(SENT_AT_HEADER)
    if "produce" not in out and isinstance(sent, int) and not isinstance(sent, bool):
        out["produce"] = sent
    return out


def last_timestamp(trace: dict[str, int]) -> int | None:
    """When the message was last published (the previous stage's out, or the producer)."""
    return max(trace.values()) if trace else None


class StageMetrics(ConsumerMetrics):
    """The consumer's metrics plus stage-labelled ones (records, batch sizes, latency, wait)."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage
        r = self.registry
        self.stage_records = Counter(
            "creditstream_stage_records_total",
            "Records through a pipeline stage, by outcome (out, rejected).",
            ["stage", "outcome"],
            registry=r,
        )
        self.stage_batch_size = Histogram(
            "creditstream_stage_batch_size_messages",
            "Messages per stage batch.",
            ["stage"],
            buckets=_BATCH,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "creditstream_stage_seconds",
            "Wall time of one stage batch: transform, publish (confirmed), ack.",
            ["stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "creditstream_stage_queue_wait_seconds",
            "Time a message waited in the stage's queue (previous publish to receipt).",
            ["stage"],
            buckets=_BUCKETS,
            registry=r,
        )

    def waited(self, trace: dict[str, int], received_us: int) -> None:
        """Observe the queue wait of one message from its trace."""
        last = last_timestamp(trace)
        if last is not None:
            self.queue_wait_seconds.labels(self.stage).observe(max(0, received_us - last) / 1e6)
