"""The KEDA + HPA scaling rule for the RabbitMQ triggers (QueueLength, MessageRate), as pure code.

Two loops act on one replica count, exactly as in a cluster:

* KEDA's poll (every `pollingInterval`) owns 0 <-> 1: each trigger's scaler returns a metric and
  an activity (or an error); the ScaledObject is active while any trigger is; activation sets
  max(1, minReplicaCount) from 0; scale to zero happens only `cooldownPeriod` after the last
  active poll (or, never active, after `initialCooldownPeriod` since creation); a scaler error
  with nothing active changes nothing ("metric unavailable").
* The HPA sync (every 15 s, `--horizontal-pod-autoscaler-sync-period`) owns 1 <-> N: out-of-range
  counts are set to the bound directly; otherwise one proposal per trigger (ceil(metric / value)
  outside the tolerance band), the largest wins, then the stabilization windows and the rate
  policies of `behavior`, clamped to [max(1, minReplicaCount), maxReplicaCount]. The HPA does
  nothing while the target has 0 replicas.

Sources: KEDA `pkg/scaling/executor/scale_scaledobjects.go` (RequestScale, scaleToZeroOrIdle,
scaleFromZeroOrIdle), `pkg/scalers/rabbitmq_scaler.go` (GetMetricsAndActivity); Kubernetes
`pkg/controller/podautoscaler/horizontal.go` (reconcileAutoscaler, computeReplicasForMetrics,
recordInitialRecommendation, stabilizeRecommendationWithBehaviors,
convertDesiredReplicasWithBehaviorRate) and `replica_calculator.go` (Tolerances.isWithin,
GetExternalPerPodMetricReplicas). No I/O here: the caller passes the clock, the queue sample and
the current replica count.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

PolicyKind = Literal["Pods", "Percent"]
SelectPolicy = Literal["Max", "Min", "Disabled"]
TriggerMode = Literal["QueueLength", "MessageRate"]

QUEUE_LENGTH: TriggerMode = "QueueLength"
MESSAGE_RATE: TriggerMode = "MessageRate"

DEFAULT_HPA_SYNC_PERIOD_S = 15.0
DEFAULT_TOLERANCE = 0.1


@dataclass(frozen=True)
class ScalingPolicy:
    """One HPA rate policy: at most `value` pods (or percent) per `period_s` seconds."""

    kind: PolicyKind
    value: int
    period_s: float


@dataclass(frozen=True)
class ScalingRules:
    """HPA behavior for one direction (autoscaling/v2 HPAScalingRules)."""

    stabilization_window_s: float
    select_policy: SelectPolicy
    policies: tuple[ScalingPolicy, ...]
    # NOTE: KEP-4951 `tolerance`; None = the controller's --horizontal-pod-autoscaler-tolerance.
    tolerance: float | None = None


# NOTE: Kubernetes defaults when `behavior` leaves a direction (or a field of it) unset.
DEFAULT_SCALE_UP = ScalingRules(
    stabilization_window_s=0,
    select_policy="Max",
    policies=(ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)),
)
DEFAULT_SCALE_DOWN = ScalingRules(
    stabilization_window_s=300,
    select_policy="Max",
    policies=(ScalingPolicy("Percent", 100, 15),),
)


def scaling_rules_from_spec(spec: Mapping[str, Any] | None, default: ScalingRules) -> ScalingRules:
    """HPAScalingRules as written in YAML (camelCase) with the unset fields defaulted."""
    if not spec:
        return default
    policies = default.policies
    if spec.get("policies") is not None:
        policies = tuple(
            ScalingPolicy(kind=p["type"], value=int(p["value"]), period_s=float(p["periodSeconds"]))
            for p in spec["policies"]
        )
    window = spec.get("stabilizationWindowSeconds")
    tolerance = spec.get("tolerance")
    return ScalingRules(
        stabilization_window_s=default.stabilization_window_s if window is None else float(window),
        select_policy=spec.get("selectPolicy") or default.select_policy,
        policies=policies,
        tolerance=default.tolerance if tolerance is None else float(tolerance),
    )


@dataclass(frozen=True)
class Tolerances:
    """replica_calculator.go `Tolerances`: no change while 1 - down <= usageRatio <= 1 + up."""

    scale_down: float = DEFAULT_TOLERANCE
    scale_up: float = DEFAULT_TOLERANCE

    def is_within(self, usage_ratio: float) -> bool:
        """`Tolerances.isWithin`: both ends of the band are inside."""
        return 1.0 - self.scale_down <= usage_ratio <= 1.0 + self.scale_up


@dataclass(frozen=True)
class TriggerSpec:
    """One rabbitmq trigger of the ScaledObject: its mode, `value` and `activationValue`."""

    mode: TriggerMode
    value: float
    activation_value: float = 0.0

    def __post_init__(self) -> None:
        if self.value <= 0:
            raise ValueError(f"{self.mode} trigger value must be > 0: {self.value}")


@dataclass(frozen=True)
class QueueSample:
    """The queue as the rabbitmq scaler reads it; None where it could not be read (an error).

    `messages` is the management API's `messages` (ready + unacked; ready only over amqp),
    `publish_rate` its `message_stats.publish_details.rate` (messages/s; amqp has none).
    """

    messages: float | None
    publish_rate: float | None = None


@dataclass(frozen=True)
class ScalerResult:
    """What one trigger's scaler returned (GetMetricsAndActivity): metric and activity, or error."""

    mode: TriggerMode
    metric: float | None  # None: the scaler returned an error
    active: bool

    @property
    def error(self) -> bool:
        """The scaler could not read its metric."""
        return self.metric is None


def scaler_result(trigger: TriggerSpec, sample: QueueSample) -> ScalerResult:
    """rabbitmq_scaler.go GetMetricsAndActivity for QueueLength and MessageRate."""
    activation = trigger.activation_value
    if trigger.mode == QUEUE_LENGTH:
        if sample.messages is None:
            return ScalerResult(trigger.mode, None, False)
        return ScalerResult(trigger.mode, sample.messages, sample.messages > activation)
    if sample.publish_rate is None:
        return ScalerResult(trigger.mode, None, False)
    # NOTE: MessageRate is active on publishes OR on messages left in the queue (same threshold).
    backlog = sample.messages is not None and sample.messages > activation
    return ScalerResult(
        trigger.mode, sample.publish_rate, sample.publish_rate > activation or backlog
    )


@dataclass(frozen=True)
class AutoscalingConfig:
    """ScaledObject + trigger + HPA parameters, as the chart's `autoscaling:` values give them."""

    queue_name: str
    value: float
    activation_value: float = 0.0
    min_replica_count: int = 0
    max_replica_count: int = 100
    polling_interval_s: float = 30.0
    cooldown_period_s: float = 300.0
    initial_cooldown_period_s: float = 0.0
    protocol: str = "auto"
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN
    tolerance: float = DEFAULT_TOLERANCE  # --horizontal-pod-autoscaler-tolerance
    hpa_sync_period_s: float = DEFAULT_HPA_SYNC_PERIOD_S
    # NOTE: the MessageRate trigger beside QueueLength; None renders QueueLength alone.
    message_rate: float | None = None
    activation_message_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.value <= 0:
            raise ValueError(f"autoscaling.queueLength (trigger value) must be > 0: {self.value}")
        if self.message_rate is not None and self.message_rate <= 0:
            raise ValueError(f"autoscaling.messageRate must be > 0: {self.message_rate}")
        if self.max_replica_count < max(1, self.min_replica_count):
            raise ValueError(
                f"maxReplicaCount {self.max_replica_count} < max(1, minReplicaCount "
                f"{self.min_replica_count})"
            )

    @property
    def triggers(self) -> tuple[TriggerSpec, ...]:
        """The ScaledObject's triggers, in the chart's order."""
        queue_length = TriggerSpec(QUEUE_LENGTH, self.value, self.activation_value)
        if self.message_rate is None:
            return (queue_length,)
        return (
            queue_length,
            TriggerSpec(MESSAGE_RATE, self.message_rate, self.activation_message_rate),
        )

    @property
    def tolerances(self) -> Tolerances:
        """Per-direction tolerances: behavior.scaleDown/scaleUp.tolerance or the cluster default."""
        down, up = self.scale_down.tolerance, self.scale_up.tolerance
        return Tolerances(
            scale_down=self.tolerance if down is None else down,
            scale_up=self.tolerance if up is None else up,
        )

    @property
    def hpa_min_replicas(self) -> int:
        """KEDA creates the HPA with minReplicas = max(1, minReplicaCount)."""
        return max(1, self.min_replica_count)

    @classmethod
    def from_values(
        cls, values: Mapping[str, Any], *, hpa_sync_period_s: float = DEFAULT_HPA_SYNC_PERIOD_S
    ) -> AutoscalingConfig:
        """Read `autoscaling:` and `consumer.queueName` of the chart values."""
        scaling = values.get("autoscaling") or {}
        behavior = scaling.get("behavior") or {}
        consumer = values.get("consumer") or {}
        return cls(
            queue_name=str(consumer.get("queueName", "creditstream.requests")),
            value=float(scaling["queueLength"]),
            activation_value=float(scaling.get("activationQueueLength", 0)),
            message_rate=(
                float(scaling["messageRate"]) if scaling.get("messageRate") is not None else None
            ),
            activation_message_rate=float(scaling.get("activationMessageRate", 0)),
            min_replica_count=int(scaling.get("minReplicaCount", 0)),
            max_replica_count=int(scaling.get("maxReplicaCount", 100)),
            polling_interval_s=float(scaling.get("pollingInterval", 30)),
            cooldown_period_s=float(scaling.get("cooldownPeriod", 300)),
            initial_cooldown_period_s=float(scaling.get("initialCooldownPeriod", 0)),
            protocol=str(scaling.get("protocol", "auto")),
            scale_up=scaling_rules_from_spec(behavior.get("scaleUp"), DEFAULT_SCALE_UP),
            scale_down=scaling_rules_from_spec(behavior.get("scaleDown"), DEFAULT_SCALE_DOWN),
            hpa_sync_period_s=hpa_sync_period_s,
        )

    @classmethod
    def from_scaled_object(
        cls,
        scaled_object: Mapping[str, Any],
        *,
        hpa_sync_period_s: float = DEFAULT_HPA_SYNC_PERIOD_S,
    ) -> AutoscalingConfig:
        """The rule a rendered ScaledObject asks KEDA for (KEDA's defaults where it is silent).

        Reads what KEDA and the HPA read: the spec's replica bounds and periods, `advanced.
        horizontalPodAutoscalerConfig.behavior`, and the rabbitmq triggers' mode, value,
        activationValue, protocol and queueName (values are strings, as the CRD has them).
        """
        spec = scaled_object["spec"]
        behavior = (spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}
        behavior = behavior.get("behavior") or {}
        triggers = {t["metadata"]["mode"]: t["metadata"] for t in spec["triggers"]}
        unknown = set(triggers) - {QUEUE_LENGTH, MESSAGE_RATE}
        if unknown or QUEUE_LENGTH not in triggers:
            raise ValueError(f"expected a QueueLength (+ MessageRate) trigger: {sorted(triggers)}")
        queue_length = triggers[QUEUE_LENGTH]
        rate = triggers.get(MESSAGE_RATE)
        protocols = {t.get("protocol", "auto") for t in triggers.values()}
        queues = {t["queueName"] for t in triggers.values()}
        if len(protocols) != 1 or len(queues) != 1:
            raise ValueError(f"triggers differ in protocol {protocols} or queue {queues}")
        return cls(
            queue_name=queues.pop(),
            value=float(queue_length["value"]),
            activation_value=float(queue_length.get("activationValue", 0)),
            message_rate=None if rate is None else float(rate["value"]),
            activation_message_rate=0.0 if rate is None else float(rate.get("activationValue", 0)),
            min_replica_count=int(spec.get("minReplicaCount", 0)),
            max_replica_count=int(spec.get("maxReplicaCount", 100)),
            polling_interval_s=float(spec.get("pollingInterval", 30)),
            cooldown_period_s=float(spec.get("cooldownPeriod", 300)),
            initial_cooldown_period_s=float(spec.get("initialCooldownPeriod", 0)),
            protocol=protocols.pop(),
            scale_up=scaling_rules_from_spec(behavior.get("scaleUp"), DEFAULT_SCALE_UP),
            scale_down=scaling_rules_from_spec(behavior.get("scaleDown"), DEFAULT_SCALE_DOWN),
            hpa_sync_period_s=hpa_sync_period_s,
        )

    def describe(self) -> list[str]:
        """Human-readable lines of every parameter (printed by the demo)."""
        return [
            f"queue={self.queue_name} protocol={self.protocol}; "
            + "; ".join(
                f"{t.mode} value={t.value:g} activationValue={t.activation_value:g}"
                for t in self.triggers
            ),
            f"replicas=[{self.min_replica_count}, {self.max_replica_count}]"
            f" pollingInterval={self.polling_interval_s:g}s"
            f" cooldownPeriod={self.cooldown_period_s:g}s"
            f" initialCooldownPeriod={self.initial_cooldown_period_s:g}s",
            f"HPA sync={self.hpa_sync_period_s:g}s tolerance down={self.tolerances.scale_down:g}"
            f" up={self.tolerances.scale_up:g}"
            f" scaleUp.window={self.scale_up.stabilization_window_s:g}s"
            f" scaleDown.window={self.scale_down.stabilization_window_s:g}s",
        ]


def load_chart_values(path: Path) -> dict[str, Any]:
    """The chart's values.yaml as a dict (the one source of truth for the rule)."""
    import yaml

    with path.open(encoding="utf-8") as handle:
        loaded = yaml.safe_load(handle) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    return loaded


def parse_set_override(text: str) -> dict[str, Any]:
    """`a.b.c=VALUE` (helm --set syntax, a YAML scalar) as a nested dict."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override {text!r} is not KEY=VALUE")
    value: Any = yaml.safe_load(raw) if raw else ""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def merge_values(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `overlay` onto `base` like helm layers `--set` onto values.yaml."""
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def flatten_values(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """`a.b=value` lines of a nested mapping (how overrides are printed)."""
    lines: list[str] = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            lines.extend(flatten_values(value, prefix=f"{path}."))
        else:
            lines.append(f"{path}={value}")
    return lines


def _milli(value: float) -> int:
    # NOTE: KEDA reports metrics and targets as milli-quantities (GenerateMetricInMili).
    return int(value * 1000)


def hpa_metric_replicas(
    metric: float, value: float, current: int, tolerances: Tolerances | float = DEFAULT_TOLERANCE
) -> int:
    """GetExternalPerPodMetricReplicas: ceil(metric / value) unless usageRatio is in the band."""
    if not isinstance(tolerances, Tolerances):
        tolerances = Tolerances(tolerances, tolerances)
    usage, target = _milli(metric), _milli(value)
    if current <= 0:
        return math.ceil(usage / target)
    if tolerances.is_within(usage / (target * current)):
        return current
    return math.ceil(usage / target)


def as_sample(sample: QueueSample | float) -> QueueSample:
    """A bare number is a QueueLength reading (messages) with no publish rate."""
    return sample if isinstance(sample, QueueSample) else QueueSample(messages=float(sample))


@dataclass(frozen=True)
class Decision:
    """What one KEDA poll or HPA sync decided."""

    at: float
    loop: Literal["keda", "hpa"]
    sample: QueueSample
    active: bool
    current: int
    desired: int
    reason: str
    results: tuple[ScalerResult, ...] = ()

    @property
    def metric(self) -> float | None:
        """The QueueLength metric (messages) this decision saw."""
        return self.sample.messages


@dataclass
class _Event:
    at: float
    replicas: int


@dataclass
class KedaHpaAutoscaler:
    """Stateful KEDA poll + HPA sync over one scale target; the caller supplies time and sample."""

    config: AutoscalingConfig
    created_at: float
    last_active_at: float | None = None
    _recommendations: list[_Event] = field(default_factory=list)
    _up_events: list[_Event] = field(default_factory=list)
    _down_events: list[_Event] = field(default_factory=list)
    _next_poll_at: float | None = None
    _next_sync_at: float | None = None
    _synced: bool = False

    def scaler_results(self, sample: QueueSample | float) -> tuple[ScalerResult, ...]:
        """Every trigger's metric and activity for this sample."""
        queue = as_sample(sample)
        return tuple(scaler_result(trigger, queue) for trigger in self.config.triggers)

    def is_active(self, sample: QueueSample | float) -> bool:
        """The ScaledObject is active while any trigger is."""
        return any(result.active for result in self.scaler_results(sample))

    def keda_poll(self, now: float, sample: QueueSample | float, current: int) -> Decision:
        """One KEDA poll (RequestScale): activation from zero, or scale to zero after cooldown."""
        cfg = self.config
        queue = as_sample(sample)
        results = self.scaler_results(queue)
        active = any(r.active for r in results)
        error = any(r.error for r in results)

        def decide(desired: int, reason: str) -> Decision:
            return Decision(now, "keda", queue, active, current, desired, reason, results)

        if active:
            if current == 0:
                self.last_active_at = now
                return decide(max(1, cfg.min_replica_count), "activated")
            if error:
                # NOTE: "PartialTriggerError": LastActiveTime is NOT refreshed.
                return decide(current, "partial trigger error")
            self.last_active_at = now
            return decide(current, "active")
        if error:
            return decide(current, "metric unavailable")
        if current > 0 and cfg.min_replica_count == 0:
            if self.last_active_at is None:
                cooled = now > self.created_at + cfg.initial_cooldown_period_s
            else:
                cooled = now > self.last_active_at + cfg.cooldown_period_s
            if cooled:
                return decide(0, "deactivated")
            return decide(current, "cooling down")
        if current < cfg.min_replica_count:
            return decide(cfg.min_replica_count, "below minReplicaCount")
        return decide(current, "inactive")

    def hpa_sync(self, now: float, sample: QueueSample | float, current: int) -> Decision:
        """One HPA reconcile (reconcileAutoscaler): bounds, metrics, stabilization, rate limits."""
        cfg = self.config
        queue = as_sample(sample)
        results = self.scaler_results(queue)
        active = any(r.active for r in results)

        def decide(desired: int, reason: str) -> Decision:
            if desired > current:
                self._up_events.append(_Event(now, desired - current))
            elif desired < current:
                self._down_events.append(_Event(now, current - desired))
            self._forget(now)
            return Decision(now, "hpa", queue, active, current, desired, reason, results)

        if current == 0:
            return decide(0, "scaling disabled at 0 replicas")
        if not self._synced:
            # recordInitialRecommendation: the count found is the first recommendation.
            self._recommendations.append(_Event(now, current))
            self._synced = True
        if current > cfg.max_replica_count:
            return decide(cfg.max_replica_count, "above maxReplicaCount")
        if current < cfg.hpa_min_replicas:
            return decide(cfg.hpa_min_replicas, "below minReplicaCount")
        proposal = self._metric_proposal(results, current)
        if proposal is None:
            return decide(current, "metric unavailable")
        stabilized = self._stabilize(now, proposal, current)
        desired, reason = self._rate_limit(now, stabilized, current)
        if desired == current and reason == "":
            reason = "within tolerance" if proposal == current else "stabilized"
        return decide(desired, reason or "metric")

    def step(
        self, now: float, sample: QueueSample | float, current: int
    ) -> tuple[int, list[Decision]]:
        """Run the loops due at `now`; return the replica count to apply and the decisions."""
        decisions: list[Decision] = []
        if self._next_poll_at is None or now >= self._next_poll_at:
            decision = self.keda_poll(now, sample, current)
            decisions.append(decision)
            current = decision.desired
            self._next_poll_at = now + self.config.polling_interval_s
        if self._next_sync_at is None or now >= self._next_sync_at:
            decision = self.hpa_sync(now, sample, current)
            decisions.append(decision)
            current = decision.desired
            self._next_sync_at = now + self.config.hpa_sync_period_s
        return current, decisions

    def _metric_proposal(self, results: tuple[ScalerResult, ...], current: int) -> int | None:
        """computeReplicasForMetrics: the largest proposal; None when the HPA must not act."""
        specs = {trigger.mode: trigger for trigger in self.config.triggers}
        proposals = [
            hpa_metric_replicas(r.metric, specs[r.mode].value, current, self.config.tolerances)
            for r in results
            if r.metric is not None
        ]
        invalid = len(results) - len(proposals)
        replicas = max(proposals, default=0)
        # NOTE: all metrics invalid, or some invalid and the valid ones would scale down.
        if not proposals or (invalid and replicas < current):
            return None
        return replicas

    # --- HPA internals (horizontal.go) ---------------------------------------------------------

    def _stabilize(self, now: float, proposal: int, current: int) -> int:
        up_cutoff = now - self.config.scale_up.stabilization_window_s
        down_cutoff = now - self.config.scale_down.stabilization_window_s
        up_recommendation = proposal
        down_recommendation = proposal
        for rec in self._recommendations:
            if rec.at > up_cutoff:
                up_recommendation = min(rec.replicas, up_recommendation)
            if rec.at > down_cutoff:
                down_recommendation = max(rec.replicas, down_recommendation)
        self._recommendations.append(_Event(now, proposal))
        recommendation = current
        recommendation = max(recommendation, up_recommendation)
        recommendation = min(recommendation, down_recommendation)
        return recommendation

    def _rate_limit(self, now: float, desired: int, current: int) -> tuple[int, str]:
        """convertDesiredReplicasWithBehaviorRate: rate policies, then [min, max]."""
        cfg = self.config
        if desired > current:
            limit = max(self._scale_up_limit(now, current), current)
            if cfg.max_replica_count <= limit:
                if desired > cfg.max_replica_count:
                    return cfg.max_replica_count, "maxReplicaCount"
            elif desired > limit:
                return limit, "scale-up rate limit"
            return desired, "scale up"
        if desired < current:
            limit = min(self._scale_down_limit(now, current), current)
            if cfg.hpa_min_replicas >= limit:
                if desired < cfg.hpa_min_replicas:
                    return cfg.hpa_min_replicas, "minReplicaCount"
            elif desired < limit:
                return limit, "scale-down rate limit"
            return desired, "scale down"
        return desired, ""

    def _changed_within(self, events: list[_Event], now: float, period_s: float) -> int:
        return sum(event.replicas for event in events if event.at > now - period_s)

    def _scale_up_limit(self, now: float, current: int) -> int:
        rules = self.config.scale_up
        if rules.select_policy == "Disabled":
            return current
        proposals = []
        for policy in rules.policies:
            start = (
                current
                - self._changed_within(self._up_events, now, policy.period_s)
                + self._changed_within(self._down_events, now, policy.period_s)
            )
            if policy.kind == "Pods":
                proposals.append(start + policy.value)
            else:
                proposals.append(math.ceil(start * (1 + policy.value / 100)))
        return min(proposals) if rules.select_policy == "Min" else max(proposals)

    def _scale_down_limit(self, now: float, current: int) -> int:
        rules = self.config.scale_down
        if rules.select_policy == "Disabled":
            return current
        proposals = []
        for policy in rules.policies:
            start = (
                current
                + self._changed_within(self._down_events, now, policy.period_s)
                - self._changed_within(self._up_events, now, policy.period_s)
            )
            if policy.kind == "Pods":
                proposals.append(start - policy.value)
            else:
                proposals.append(int(start * (1 - policy.value / 100)))
        # NOTE: for scale-down "Max" picks the policy allowing the biggest change: the lowest limit.
        return max(proposals) if rules.select_policy == "Min" else min(proposals)

    def _forget(self, now: float) -> None:
        keep = max(
            self.config.scale_up.stabilization_window_s,
            self.config.scale_down.stabilization_window_s,
        )
        self._recommendations = [r for r in self._recommendations if r.at > now - keep]
        policies = self.config.scale_up.policies + self.config.scale_down.policies
        longest = max((p.period_s for p in policies), default=0.0)
        self._up_events = [e for e in self._up_events if e.at > now - longest]
        self._down_events = [e for e in self._down_events if e.at > now - longest]


def with_queue(config: AutoscalingConfig, queue_name: str) -> AutoscalingConfig:
    """The same rule watching another queue (the demo's per-run queue)."""
    return replace(config, queue_name=queue_name)
