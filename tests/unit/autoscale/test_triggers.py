"""Several triggers, metric-unavailable and out-of-range states, against upstream.

Each test names the upstream function it follows:
- Kubernetes `pkg/controller/podautoscaler/replica_calculator.go`: `Tolerances.isWithin`,
  `GetExternalPerPodMetricReplicas` (KEDA's triggers are external metrics, target AverageValue);
- Kubernetes `pkg/controller/podautoscaler/horizontal.go`: `reconcileAutoscaler` (out-of-range
  replicas, `recordInitialRecommendation`), `computeReplicasForMetrics` (max over metrics,
  invalid metrics), `stabilizeRecommendationWithBehaviors`,
  `convertDesiredReplicasWithBehaviorRate`;
- KEDA `pkg/scaling/executor/scale_scaledobjects.go`: `RequestScale` (activation, cooldown,
  isError), `pkg/scalers/rabbitmq_scaler.go`: `GetMetricsAndActivity` (QueueLength and
  MessageRate), `getVhostAndPathFromURL`, `queueInfo` (the management API fields read).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from creditstream.autoscale.rule import (
    DEFAULT_SCALE_DOWN,
    AutoscalingConfig,
    KedaHpaAutoscaler,
    QueueSample,
    ScalingPolicy,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def values(**autoscaling: Any) -> dict[str, Any]:
    base = {"queueLength": 5, "maxReplicaCount": 10, "minReplicaCount": 0}
    return {"autoscaling": {**base, **autoscaling}, "consumer": {"queueName": "q"}}


# --- horizontal.go: reconcileAutoscaler ---------------------------------------------------


@pytest.mark.parametrize(
    ("current", "expected", "reason"),
    [
        pytest.param(6, 4, "above maxReplicaCount", id="above-max"),
        pytest.param(1, 3, "below minReplicaCount", id="below-min"),
    ],
)
def test_out_of_range_replicas_are_set_directly(current: int, expected: int, reason: str) -> None:
    # `currentReplicas > hpa.Spec.MaxReplicas` / `< minReplicas` is decided before any metric
    # is read: even with every metric unavailable the count is brought into range.
    config = AutoscalingConfig.from_values(values(minReplicaCount=3, maxReplicaCount=4))
    scaler = KedaHpaAutoscaler(config, created_at=0)
    decision = scaler.hpa_sync(0, QueueSample(messages=None), current=current)
    assert (decision.desired, decision.reason) == (expected, reason)


def test_out_of_range_ignores_rate_limits() -> None:
    # Scale-down limited to 1 pod per 60 s, yet 9 > max 4 goes straight to 4.
    slow_down = replace(
        DEFAULT_SCALE_DOWN, stabilization_window_s=0, policies=(ScalingPolicy("Pods", 1, 60),)
    )
    config = AutoscalingConfig(queue_name="q", value=5, max_replica_count=4, scale_down=slow_down)
    scaler = KedaHpaAutoscaler(config, created_at=0)
    assert scaler.hpa_sync(0, 1000, current=9).desired == 4


# --- horizontal.go: computeReplicasForMetrics ---------------------------------------------


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        # QueueLength 100/50 -> 2, MessageRate 900/300 -> 3: the larger wins
        pytest.param(QueueSample(100, 900.0), 3, id="rate-wins"),
        # QueueLength 400/50 -> 8 (capped 5 by the scale-up rate from 1), rate 300/300 -> 1
        pytest.param(QueueSample(400, 300.0), 5, id="backlog-wins"),
        # one metric unavailable: the other still scales up
        pytest.param(QueueSample(400, None), 5, id="rate-unavailable-queue-still-scales"),
    ],
)
def test_several_triggers_take_the_largest_proposal(sample: QueueSample, expected: int) -> None:
    config = AutoscalingConfig.from_values(values(queueLength=50, messageRate=300))
    scaler = KedaHpaAutoscaler(config, created_at=0)
    assert scaler.hpa_sync(0, sample, current=1).desired == expected


def test_no_scale_down_while_a_metric_is_unavailable() -> None:
    # `invalidMetricsCount > 0 && replicas < specReplicas`: return -1, do not scale.
    config = AutoscalingConfig.from_values(
        values(
            queueLength=50,
            messageRate=300,
            behavior={"scaleDown": {"stabilizationWindowSeconds": 0}},
        )
    )
    scaler = KedaHpaAutoscaler(config, created_at=0)
    decision = scaler.hpa_sync(0, QueueSample(0, None), current=5)
    assert (decision.desired, decision.reason) == (5, "metric unavailable")
    assert scaler.hpa_sync(15, QueueSample(0, 0.0), current=5).desired == 1


def test_every_metric_unavailable_changes_nothing() -> None:
    config = AutoscalingConfig.from_values(values(queueLength=50, messageRate=300))
    scaler = KedaHpaAutoscaler(config, created_at=0)
    decision = scaler.hpa_sync(0, QueueSample(None, None), current=3)
    assert (decision.desired, decision.reason) == (3, "metric unavailable")


# --- KEDA scale_scaledobjects.go: RequestScale (isActive, isError) --------------------------


def test_scaler_error_never_scales_to_zero() -> None:
    # `case isError && scaledObject.Spec.Fallback == nil`: "Triggers ... not working
    # correctly", nothing changes, however long the cooldown has passed.
    scaler = KedaHpaAutoscaler(
        AutoscalingConfig.from_values(values(cooldownPeriod=10)), created_at=0
    )
    assert scaler.keda_poll(0, 50, current=2).active
    decision = scaler.keda_poll(100, QueueSample(messages=None), current=2)
    assert (decision.desired, decision.reason) == (2, "metric unavailable")
    # Readable again and idle: the cooldown counts from the last ACTIVE poll (t=0).
    assert scaler.keda_poll(101, 0, current=2).desired == 0


def test_partial_error_does_not_refresh_last_active_time() -> None:
    # `case isError:` while active and replicas > 0: no LastActiveTime update.
    config = AutoscalingConfig.from_values(values(cooldownPeriod=10, messageRate=300))
    scaler = KedaHpaAutoscaler(config, created_at=0)
    scaler.keda_poll(0, QueueSample(5, 0.0), current=1)
    assert scaler.keda_poll(8, QueueSample(None, 50.0), current=1).reason == "partial trigger error"
    assert scaler.last_active_at == 0
    assert scaler.keda_poll(11, QueueSample(0, 0.0), current=1).desired == 0


# --- KEDA rabbitmq_scaler.go: GetMetricsAndActivity ---------------------------------------


@pytest.mark.parametrize(
    ("sample", "active"),
    [
        # MessageRate: isActive = publishRate > activationValue || messages > activationValue
        pytest.param(QueueSample(0, 0.0), False, id="idle"),
        pytest.param(QueueSample(0, 40.0), True, id="keeping-up-queue-empty-rate-active"),
        pytest.param(QueueSample(3, 0.0), True, id="backlog-no-publishes"),
        pytest.param(QueueSample(None, 40.0), True, id="queue-length-error-rate-active"),
    ],
)
def test_message_rate_trigger_activity(sample: QueueSample, active: bool) -> None:
    config = AutoscalingConfig.from_values(values(messageRate=300))
    scaler = KedaHpaAutoscaler(config, created_at=0)
    assert scaler.keda_poll(0, sample, current=0).active is active


def test_message_rate_activation_value_is_its_own() -> None:
    config = AutoscalingConfig.from_values(
        values(messageRate=300, activationMessageRate=50, activationQueueLength=100)
    )
    scaler = KedaHpaAutoscaler(config, created_at=0)
    assert not scaler.keda_poll(0, QueueSample(5, 40.0), current=0).active
    assert scaler.keda_poll(5, QueueSample(5, 60.0), current=0).active
    # MessageRate's own activation also applies to `messages` (the scaler's `||` clause).
    assert scaler.keda_poll(10, QueueSample(60, 0.0), current=1).active


def test_steady_traffic_keeps_consumers_while_the_queue_reads_zero() -> None:
    # Issue 13: 500 records/s kept up with, queue 0: QueueLength alone would cool down to 0.
    config = AutoscalingConfig.from_values(
        values(queueLength=500, messageRate=200, cooldownPeriod=20, pollingInterval=1)
    )
    scaler = KedaHpaAutoscaler(replace(config, hpa_sync_period_s=5), created_at=0)
    replicas = 0
    for now in range(0, 120):
        replicas, _ = scaler.step(now, QueueSample(0 if now else 50, 500.0), replicas)
        assert now == 0 or replicas >= 3, f"t={now}: {replicas} replicas for 500 msg/s"
