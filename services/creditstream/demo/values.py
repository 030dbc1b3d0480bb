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

# NOTE: layered on the chart values like `helm --set` and printed at start. The consumer runs
# with the chart's own knobs (batchSize 256, batchTimeoutMs 20, prefetch 1024): one process
# scores 4,000-8,000 records/s on this 2-core machine (tests/integration/test_demo_latency.py
# pins at least twice the demo's 500/s), so the backlog a burst builds while the first consumer
# starts from zero drains within about a second, and the records published after it was ready
# (steady state) do not inherit that wait. The replicas beyond one come from that backlog
# (QueueLength) and go again; the publish rate (MessageRate, chart 1000/s) holds one while
# the producer runs.
#
# pollingInterval 1 (chart 5): the management API already shows a new burst 5-10 s late
# (collect_statistics_interval); a 1 s poll adds at most 1 s on top instead of up to 5.
#
# queueLength 2000 (chart 500): the target backlog per replica is what one replica drains
# within the 1 s latency goal; one drains >= 2,000 records/s even with the machine at load
# 15. With 500, the cold backlog (2,000-5,000, read 5-10 s late) asked for +4 replicas whose
# start-ups (~1 CPU-s each) took the 2 cores from the replica draining it: steady p99 1.4-1.7 s.
# The chart's cooldown (60 s) and scale-down window (60 s) would stretch the demo past
# 5 minutes.
DEMO_OVERRIDES: Final[Mapping[str, Any]] = {
    "autoscaling": {
        "queueLength": 2000,
        "pollingInterval": 1,
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
