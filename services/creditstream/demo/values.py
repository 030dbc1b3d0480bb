"""The demo's rule and consumer knobs: the chart's values, the demo's overrides, `--set` on top."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from creditstream.autoscale.rule import (
    AutoscalingConfig,
    flatten_values,
    load_chart_values,
    merge_values,
    with_queue,
)
from creditstream.settings import REPO_ROOT

CHART_VALUES: Final = REPO_ROOT / "charts" / "creditstream" / "values.yaml"

# NOTE: layered on the chart values like `helm --set` and printed at start. The chart's cooldown
# (60 s) and scale-down window (60 s) would stretch the demo past 5 minutes. The consumer commits
# every batch durably (SQLite synchronous=FULL: one fsync per batch), so records/s per process
# is about batch size x commits/s: with the chart's batchSize 256 / prefetch 1024 one process
# scores ~1,700 records/s on a 2-core laptop and a 15,000-record burst is gone before the rule
# has polled twice; with 4 / 4 one process scores ~300 records/s and more replicas add
# throughput (~500/s with 2, ~850/s with 4, measured here), so a 500 records/s producer
# outruns one replica and scaling out is what catches up.
#
# messageRate 150: one such consumer absorbs ~300 records/s on a quiet machine, so 500/s of
# steady traffic keeps ceil(500 / 150) = 4 replicas (~850/s) even while the queue reads 0
# because they keep up; the headroom is for a machine shared with other work.
DEMO_OVERRIDES: Final[Mapping[str, Any]] = {
    "consumer": {"batchSize": 4, "prefetch": 4},
    "autoscaling": {
        "messageRate": 150,
        "cooldownPeriod": 20,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 15}},
    },
}
# NOTE: kube-controller-manager --horizontal-pod-autoscaler-sync-period (default 15 s).
DEMO_HPA_SYNC_PERIOD_S: Final = 5.0


@dataclass(frozen=True)
class ConsumerKnobs:
    """The consumer's micro-batching knobs, read from the chart's `consumer:` values."""

    batch_size: int
    batch_timeout_ms: int
    prefetch: int

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> ConsumerKnobs:
        """`consumer.batchSize`, `.batchTimeoutMs`, `.prefetch` (the chart passes them as env)."""
        consumer = values.get("consumer") or {}
        return cls(
            batch_size=int(consumer["batchSize"]),
            batch_timeout_ms=int(consumer["batchTimeoutMs"]),
            prefetch=int(consumer["prefetch"]),
        )

    def describe(self) -> str:
        """One line for the console."""
        return (
            f"batchSize={self.batch_size} batchTimeoutMs={self.batch_timeout_ms} "
            f"prefetch={self.prefetch}"
        )


@dataclass(frozen=True)
class DemoValues:
    """The chart values as the demo uses them, and the override lines it prints."""

    autoscaling: AutoscalingConfig
    consumer: ConsumerKnobs
    override_lines: list[str]


def load_demo_values(overrides: list[Mapping[str, Any]], queue: str) -> DemoValues:
    """Chart values + demo overrides + --set overrides; the printed override lines."""
    values = load_chart_values(CHART_VALUES)
    lines = []
    for overlay in [DEMO_OVERRIDES, *overrides]:
        values = merge_values(values, overlay)
        lines.extend(flatten_values(overlay))
    config = AutoscalingConfig.from_values(values, hpa_sync_period_s=DEMO_HPA_SYNC_PERIOD_S)
    lines.append(
        f"(kube-controller-manager) --horizontal-pod-autoscaler-sync-period="
        f"{DEMO_HPA_SYNC_PERIOD_S:g}s"
    )
    lines.append(f"consumer.queueName={queue}  (per-run queue)")
    return DemoValues(with_queue(config, queue), ConsumerKnobs.from_values(values), lines)
