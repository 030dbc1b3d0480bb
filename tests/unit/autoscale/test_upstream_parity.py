"""The local twin against the upstream code it imitates, one divergence per test.

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

from typing import Any

import pytest

from creditstream.autoscale.queue_depth import (
    ManagementApiReader,
    parse_management_queue,
    vhost_of,
)
from creditstream.autoscale.rule import (
    AutoscalingConfig,
    KedaHpaAutoscaler,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def values(**autoscaling: Any) -> dict[str, Any]:
    base = {"queueLength": 5, "maxReplicaCount": 10, "minReplicaCount": 0}
    return {"autoscaling": {**base, **autoscaling}, "consumer": {"queueName": "q"}}


# --- replica_calculator.go: Tolerances.isWithin(usageRatio) ---------------------------------
# (1.0 - scaleDown) <= usageRatio && usageRatio <= (1.0 + scaleUp): both ends inclusive.


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        # value 5 per replica, 4 replicas: usageRatio = messages / 20
        pytest.param(22, 4, id="ratio-1.1-upper-bound-inside"),
        pytest.param(18, 4, id="ratio-0.9-lower-bound-inside"),
        pytest.param(22.2, 5, id="ratio-1.11-scales-up"),
        pytest.param(17.8, 4, id="ratio-0.89-scales-down-to-ceil-3.56"),
        pytest.param(13, 3, id="ratio-0.65-scales-down"),
    ],
)
def test_tolerance_band_is_inclusive_like_is_within(messages: float, expected: int) -> None:
    scaler = KedaHpaAutoscaler(
        AutoscalingConfig.from_values(
            values(behavior={"scaleDown": {"stabilizationWindowSeconds": 0}})
        ),
        created_at=0,
    )
    assert scaler.hpa_sync(0, messages, current=4).desired == expected


@pytest.mark.parametrize(
    ("behavior", "messages", "expected"),
    [
        # scaleUp.tolerance 0.5: ratio 1.4 stays, 1.6 scales (ceil(32/5) = 7)
        pytest.param({"scaleUp": {"tolerance": 0.5}}, 28, 4, id="up-0.5-ratio-1.4-holds"),
        pytest.param({"scaleUp": {"tolerance": 0.5}}, 32, 7, id="up-0.5-ratio-1.6-scales"),
        # the other direction keeps the cluster default 0.1: ratio 0.85 scales down
        pytest.param({"scaleUp": {"tolerance": 0.5}}, 17, 4, id="up-only-down-default"),
        pytest.param({"scaleUp": {"tolerance": 0.5}}, 16, 4, id="ratio-0.8-ceil-3.2-is-4"),
        pytest.param({"scaleUp": {"tolerance": 0.5}}, 14, 3, id="ratio-0.7-scales-down"),
        # scaleDown.tolerance 0.4: ratio 0.65 holds, 0.55 scales down
        pytest.param({"scaleDown": {"tolerance": 0.4}}, 13, 4, id="down-0.4-ratio-0.65-holds"),
        pytest.param({"scaleDown": {"tolerance": 0.4}}, 11, 3, id="down-0.4-ratio-0.55-scales"),
        pytest.param({"scaleDown": {"tolerance": 0.4}}, 23, 5, id="down-only-up-default"),
        # tolerance 0 in one direction: any change scales
        pytest.param({"scaleUp": {"tolerance": 0}}, 20.5, 5, id="up-0-scales-at-1.025"),
    ],
)
def test_per_direction_tolerance_of_hpa_scaling_rules(
    behavior: dict[str, Any], messages: float, expected: int
) -> None:
    # KEP-4951: HPAScalingRules.tolerance; unset -> --horizontal-pod-autoscaler-tolerance (0.1).
    down = {"stabilizationWindowSeconds": 0, **behavior.get("scaleDown", {})}
    config = AutoscalingConfig.from_values(values(behavior={**behavior, "scaleDown": down}))
    scaler = KedaHpaAutoscaler(config, created_at=0)
    assert scaler.hpa_sync(0, messages, current=4).desired == expected


# --- horizontal.go: reconcileAutoscaler ---------------------------------------------------


def test_initial_recommendation_is_the_current_count() -> None:
    # recordInitialRecommendation(currentReplicas, key): the first sync already sees the current
    # count in the scale-down window, so a target found at 8 is not dropped at once.
    config = AutoscalingConfig.from_values(values(queueLength=10))
    scaler = KedaHpaAutoscaler(config, created_at=0)
    decision = scaler.hpa_sync(0, 0, current=8)
    assert decision.desired == 8
    # ... until that recommendation leaves the 300 s window (strictly after the cutoff).
    assert scaler.hpa_sync(299, 0, current=8).desired == 8
    assert scaler.hpa_sync(301, 0, current=8).desired == 1


# --- KEDA scale_scaledobjects.go: RequestScale ----------------------------------------------


def test_active_with_replicas_below_min_is_left_to_the_hpa() -> None:
    # Activation (scaleFromZeroOrIdle) happens only at 0 replicas; 1 < min 3 is the HPA's.
    scaler = KedaHpaAutoscaler(
        AutoscalingConfig.from_values(values(minReplicaCount=3)), created_at=0
    )
    assert scaler.keda_poll(0, 10, current=1).desired == 1
    assert scaler.keda_poll(5, 10, current=0).desired == 3


# --- KEDA rabbitmq_scaler.go: getVhostAndPathFromURL, queueInfo ---------------------------


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        pytest.param("http://g:g@h:15672/sub/prod", "prod", id="last-segment"),
        pytest.param("http://g:g@h:15672/a/b/%2Fdemo", "/demo", id="last-segment-decoded"),
        pytest.param("http://g:g@h:15672/sub/", "/", id="empty-last-segment-is-root"),
    ],
)
def test_vhost_is_the_last_path_segment(url: str, vhost: str) -> None:
    assert vhost_of(url) == vhost


def test_management_path_prefix_is_kept() -> None:
    # resolvedPath: everything before the vhost segment stays in front of /api/...
    reader = ManagementApiReader("http://u:p@rabbit:15672/rabbitmq/prod", "q")
    assert (reader.endpoint, reader.vhost) == ("http://rabbit:15672/rabbitmq", "prod")


def test_publish_rate_without_message_stats_is_zero() -> None:
    # queueInfo.MessageStat.PublishDetail.Rate: RabbitMQ omits message_stats until a queue has
    # traffic; the scaler reads the zero value, so MessageRate is 0 (idle), not an error.
    depth = parse_management_queue(
        {"name": "q", "messages": 0, "messages_ready": 0, "messages_unacknowledged": 0}
    )
    assert depth.publish_rate == 0.0
