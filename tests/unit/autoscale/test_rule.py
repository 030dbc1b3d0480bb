"""The local KEDA + HPA rule against KEDA's and Kubernetes' documented behaviour."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from creditstream.autoscale.rule import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    AutoscalingConfig,
    KedaHpaAutoscaler,
    ScalingPolicy,
    flatten_values,
    hpa_metric_replicas,
    load_chart_values,
    merge_values,
    parse_set_override,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART_VALUES = REPO_ROOT / "charts" / "creditstream" / "values.yaml"


def make_config(**changes: object) -> AutoscalingConfig:
    base = AutoscalingConfig(queue_name="q", value=5, max_replica_count=100)
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("metric", "value", "current", "expected"),
    [
        # keda-docs rabbitmq-queue: "if one pod can handle 10 messages ... 30 messages -> 3 pods"
        pytest.param(30, 10, 1, 3, id="keda-docs-30-msgs-value-10-to-3"),
        pytest.param(20, 5, 1, 4, id="20-msgs-value-5-to-4"),
        pytest.param(21, 5, 1, 5, id="ceil-rounds-up"),
        pytest.param(0, 5, 3, 0, id="empty-queue-proposes-0"),
        # HPA tolerance: |metric / (value * current) - 1| <= 0.1 keeps the current count
        pytest.param(21, 5, 4, 4, id="ratio-1.05-within-tolerance"),
        pytest.param(21.5, 5, 4, 4, id="ratio-1.075-within-tolerance"),
        pytest.param(23, 5, 4, 5, id="ratio-1.15-scales"),
        pytest.param(17, 5, 4, 4, id="ratio-0.85-scales-to-ceil-4"),
        pytest.param(13, 5, 4, 3, id="ratio-0.65-scales-down"),
    ],
)
def test_hpa_metric_replicas(metric: float, value: float, current: int, expected: int) -> None:
    assert hpa_metric_replicas(metric, value, current, 0.1) == expected


def test_documented_example_20_messages_value_5_gives_4_replicas() -> None:
    scaler = KedaHpaAutoscaler(make_config(value=5), created_at=0)
    replicas, decisions = scaler.step(0, 20, current=0)
    assert [d.loop for d in decisions] == ["keda", "hpa"]
    assert decisions[0].desired == 1 and decisions[0].reason == "activated"
    assert replicas == 4


@pytest.mark.parametrize(
    ("activation_value", "metric", "expected_replicas"),
    [
        pytest.param(0, 0, 0, id="empty-queue-stays-at-0"),
        pytest.param(0, 1, 1, id="one-message-activates"),
        pytest.param(10, 10, 0, id="equal-to-activation-stays-0"),
        pytest.param(10, 11, 1, id="above-activation-activates"),
        pytest.param(10.5, 10, 0, id="float-activation-value"),
    ],
)
def test_activation(activation_value: float, metric: float, expected_replicas: int) -> None:
    scaler = KedaHpaAutoscaler(
        make_config(activation_value=activation_value, value=100), created_at=0
    )
    assert scaler.keda_poll(0, metric, current=0).desired == expected_replicas


def test_activation_uses_min_replica_count_when_above_one() -> None:
    scaler = KedaHpaAutoscaler(make_config(min_replica_count=3), created_at=0)
    assert scaler.keda_poll(0, 1, current=0).desired == 3


def test_min_replica_count_above_zero_never_scales_to_zero() -> None:
    scaler = KedaHpaAutoscaler(make_config(min_replica_count=2, cooldown_period_s=1), created_at=0)
    scaler.keda_poll(0, 50, current=2)
    assert scaler.keda_poll(100, 0, current=2).desired == 2


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(30.0, 1, id="before-cooldown"),
        pytest.param(60.0, 1, id="exactly-cooldown-not-after"),
        pytest.param(60.5, 0, id="after-cooldown"),
    ],
)
def test_scale_to_zero_only_after_cooldown_since_last_active(now: float, expected: int) -> None:
    scaler = KedaHpaAutoscaler(make_config(cooldown_period_s=60), created_at=0)
    assert scaler.keda_poll(0, 10, current=1).active
    assert scaler.keda_poll(now, 0, current=1).desired == expected


def test_cooldown_restarts_at_every_active_poll() -> None:
    scaler = KedaHpaAutoscaler(make_config(cooldown_period_s=60), created_at=0)
    scaler.keda_poll(0, 10, current=1)
    scaler.keda_poll(50, 3, current=1)  # still active: the clock restarts
    assert scaler.keda_poll(100, 0, current=1).desired == 1
    assert scaler.keda_poll(111, 0, current=1).desired == 0


@pytest.mark.parametrize(
    ("now", "expected"),
    [pytest.param(59.0, 2, id="inside-initial-cooldown"), pytest.param(61.0, 0, id="after-it")],
)
def test_never_active_target_waits_for_initial_cooldown(now: float, expected: int) -> None:
    scaler = KedaHpaAutoscaler(make_config(initial_cooldown_period_s=60), created_at=0)
    assert scaler.keda_poll(now, 0, current=2).desired == expected


def test_hpa_does_nothing_at_zero_replicas() -> None:
    scaler = KedaHpaAutoscaler(make_config(), created_at=0)
    decision = scaler.hpa_sync(0, 10_000, current=0)
    assert decision.desired == 0


def test_scale_up_rate_limit_max_of_4_pods_and_100_percent_per_15s() -> None:
    scaler = KedaHpaAutoscaler(make_config(value=10), created_at=0)
    # 1000 messages / 10 per replica = 100 desired; HPA may add max(4 pods, 100 %) per 15 s.
    assert scaler.hpa_sync(0, 1000, current=1).desired == 5
    assert scaler.hpa_sync(5, 1000, current=5).desired == 5  # same 15 s period: no more
    assert scaler.hpa_sync(15, 1000, current=5).desired == 10
    assert scaler.hpa_sync(30, 1000, current=10).desired == 20
    assert scaler.hpa_sync(45, 1000, current=20).desired == 40


def test_scale_up_clamped_to_max_replica_count() -> None:
    scaler = KedaHpaAutoscaler(make_config(value=500, max_replica_count=8), created_at=0)
    assert scaler.hpa_sync(0, 30_000, current=1).desired == 5
    assert scaler.hpa_sync(15, 30_000, current=5).desired == 8


def test_scale_down_uses_highest_recommendation_of_stabilization_window() -> None:
    scaler = KedaHpaAutoscaler(make_config(value=10, max_replica_count=10), created_at=0)
    assert scaler.hpa_sync(0, 80, current=8).desired == 8
    # The queue drains; the window still holds the recommendation 8 from t=0.
    assert scaler.hpa_sync(15, 0, current=8).desired == 8
    assert scaler.hpa_sync(299, 20, current=8).desired == 8
    # t=300: the t=0 entry left the 300 s window; the highest left is 2 (t=299).
    decision = scaler.hpa_sync(300, 0, current=8)
    assert decision.desired == 2
    assert scaler.hpa_sync(600, 0, current=2).desired == 1  # clamped to max(1, min)


def test_custom_stabilization_window_from_behavior() -> None:
    values = {
        "autoscaling": {
            "queueLength": 10,
            "maxReplicaCount": 10,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 20}},
        },
        "consumer": {"queueName": "q"},
    }
    scaler = KedaHpaAutoscaler(AutoscalingConfig.from_values(values), created_at=0)
    assert scaler.hpa_sync(0, 80, current=8).desired == 8
    assert scaler.hpa_sync(15, 0, current=8).desired == 8
    assert scaler.hpa_sync(30, 0, current=8).desired == 1


def test_scale_down_rate_policy_pods() -> None:
    down = replace(
        DEFAULT_SCALE_DOWN, stabilization_window_s=0, policies=(ScalingPolicy("Pods", 2, 60),)
    )
    scaler = KedaHpaAutoscaler(make_config(value=10, scale_down=down), created_at=0)
    assert scaler.hpa_sync(0, 0, current=8).desired == 6
    assert scaler.hpa_sync(15, 0, current=6).desired == 6  # 2 pods per 60 s used up
    assert scaler.hpa_sync(61, 0, current=6).desired == 4


def test_disabled_scale_up() -> None:
    up = replace(DEFAULT_SCALE_UP, select_policy="Disabled")
    scaler = KedaHpaAutoscaler(make_config(scale_up=up), created_at=0)
    assert scaler.hpa_sync(0, 1000, current=1).desired == 1


def test_step_honours_polling_interval_and_sync_period() -> None:
    config = make_config(value=5, polling_interval_s=5, hpa_sync_period_s=15)
    scaler = KedaHpaAutoscaler(config, created_at=0)
    assert scaler.step(0, 0, 0)[0] == 0
    # Messages arrive at t=1, but KEDA only polls again at t=5.
    assert scaler.step(1, 40, 0) == (0, [])
    replicas, decisions = scaler.step(5, 40, 0)
    assert replicas == 1 and [d.loop for d in decisions] == ["keda"]
    # The HPA syncs at t=15 and applies ceil(40/5)=8 (rate limit 1 -> 5 first).
    replicas, decisions = scaler.step(15, 40, 1)
    assert replicas == 5 and decisions[-1].reason == "scale-up rate limit"


def test_full_cycle_burst_drain_cooldown_to_zero() -> None:
    config = make_config(
        value=500,
        max_replica_count=8,
        polling_interval_s=5,
        cooldown_period_s=30,
        hpa_sync_period_s=5,
        scale_down=replace(DEFAULT_SCALE_DOWN, stabilization_window_s=10),
    )
    scaler = KedaHpaAutoscaler(config, created_at=0)
    depth = {0: 0, 5: 6000, 10: 6000, 15: 6000, 20: 6000, 25: 1000, 30: 0}
    replicas, history = 0, []
    for now in range(0, 90, 5):
        replicas, _ = scaler.step(now, depth.get(now, 0), replicas)
        history.append(replicas)
    # t=5: KEDA 0 -> 1, HPA 1 -> 5 (rate limit); t=20: the 15 s period is over -> 8 (max).
    assert history[:5] == [0, 5, 5, 5, 8]
    # Drained at t=30: down to 1 once t=20's 8 leaves the 10 s window (t=30 still sees 2).
    assert history[5:8] == [8, 2, 1]
    # Zero only when the cooldown since the last active poll (t=25) has passed: t=60, not 55.
    assert history[11] == 1 and history[12] == 0 and history[-1] == 0


def test_chart_values_are_the_source_of_truth() -> None:
    values = load_chart_values(CHART_VALUES)
    config = AutoscalingConfig.from_values(values)
    scaling = values["autoscaling"]
    assert config.value == float(scaling["queueLength"])
    assert config.activation_value == float(scaling["activationQueueLength"])
    assert config.max_replica_count == scaling["maxReplicaCount"]
    assert config.min_replica_count == scaling["minReplicaCount"]
    assert config.polling_interval_s == scaling["pollingInterval"]
    assert config.cooldown_period_s == scaling["cooldownPeriod"]
    assert config.queue_name == values["consumer"]["queueName"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "autoscaling.cooldownPeriod=15", {"autoscaling": {"cooldownPeriod": 15}}, id="int"
        ),
        pytest.param("a.b=1.5", {"a": {"b": 1.5}}, id="float"),
        pytest.param("consumer.queueName=x.y", {"consumer": {"queueName": "x.y"}}, id="string"),
    ],
)
def test_parse_set_override(text: str, expected: dict[str, object]) -> None:
    assert parse_set_override(text) == expected


def test_parse_set_override_rejects_missing_equals() -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_set_override("autoscaling.cooldownPeriod")


def test_merge_values_layers_overrides_without_touching_base() -> None:
    base = {"autoscaling": {"cooldownPeriod": 60, "behavior": {}}, "consumer": {"queueName": "q"}}
    overlay = {
        "autoscaling": {
            "cooldownPeriod": 15,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}},
        }
    }
    merged = merge_values(base, overlay)
    assert merged["autoscaling"]["cooldownPeriod"] == 15
    assert merged["autoscaling"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 10
    assert base["autoscaling"]["cooldownPeriod"] == 60
    assert flatten_values(overlay) == [
        "autoscaling.cooldownPeriod=15",
        "autoscaling.behavior.scaleDown.stabilizationWindowSeconds=10",
    ]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"value": 0}, id="zero-value"),
        pytest.param({"max_replica_count": 0}, id="max-below-1"),
    ],
)
def test_config_rejects_invalid(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_config(**changes)
