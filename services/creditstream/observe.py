"""`creditstream observe`: follow a release's consumer Deployment, HPA and ScaledObject.

The parsing is pure (plain dicts exactly as the API server returns them, so recorded JSON
fixtures test it); `ClusterObserver` is the thin edge that fetches them with the `kubernetes`
client. Rows go to the same timeline CSV/PNG as `creditstream demo`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from creditstream.timeline import TimelineRow, TimelineWriter, plot_timeline, summarize_timeline

if TYPE_CHECKING:
    from creditstream.autoscale.queue_depth import QueueDepth

HPA_DEPTH_SOURCE: Final = "hpa-external-metric"
CONSUMER_SELECTOR: Final = (
    "app.kubernetes.io/instance={release},app.kubernetes.io/component=consumer"
)

# NOTE: apimachinery resource.Quantity: <number><suffix>, the suffix binary (Ki..Ei), decimal
# (n, u, m, "", k, M, G, T, P, E) or an exponent (e3, E-2). `1E` is an exa; `1E3` an exponent.
_SUFFIXES: Final = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY: Final = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<exponent>[eE][+-]?[0-9]+)|(?P<suffix>[KMGTPE]i|[numkMGTPE]))?"
)


def parse_quantity(text: str | int | float) -> float:
    """A Kubernetes quantity ("1500m", "6k", "12", "1Ki", "2e3", "1E") as a float.

    Raises ValueError naming the text when it is no quantity.
    """
    if isinstance(text, int | float):
        return float(text)
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 1Gi, 500M, 1e9, 250m)")
    number = Decimal(match["number"])
    if match["exponent"]:
        return float(number.scaleb(int(match["exponent"][1:])))
    return float(number * _SUFFIXES[match["suffix"] or ""])


def _condition(conditions: Sequence[Mapping[str, Any]] | None, kind: str) -> Mapping[str, Any]:
    for condition in conditions or ():
        if condition.get("type") == kind:
            return condition
    return {}


def _status_flag(conditions: Sequence[Mapping[str, Any]] | None, kind: str) -> str:
    return str(_condition(conditions, kind).get("status", "Unknown"))


@dataclass(frozen=True)
class DeploymentStatus:
    """Replica counts of a Deployment (apps/v1); the API omits zero counts."""

    name: str
    spec_replicas: int
    replicas: int
    ready: int
    available: int
    updated: int


@dataclass(frozen=True)
class HpaStatus:
    """State of an autoscaling/v2 HorizontalPodAutoscaler."""

    name: str
    min_replicas: int
    max_replicas: int
    current_replicas: int
    desired_replicas: int
    metric_name: str | None
    metric_average: float | None
    target_average: float | None
    scaling_active: str
    scaling_limited: str
    reason: str

    @property
    def metric_total(self) -> float | None:
        """The external metric summed over pods (= queue messages for an AverageValue target)."""
        if self.metric_average is None:
            return None
        return self.metric_average * max(self.current_replicas, 1)


@dataclass(frozen=True)
class ScaledObjectStatus:
    """State of a KEDA ScaledObject (keda.sh/v1alpha1)."""

    name: str
    target_name: str
    hpa_name: str
    min_replicas: int
    max_replicas: int
    ready: str
    active: str
    fallback: str
    paused: str
    last_active_time: str | None
    queue_name: str | None
    trigger_value: float | None


def parse_deployment(obj: Mapping[str, Any]) -> DeploymentStatus:
    """A Deployment object as returned by GET /apis/apps/v1/namespaces/{ns}/deployments/{name}."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return DeploymentStatus(
        name=obj["metadata"]["name"],
        spec_replicas=int(spec.get("replicas", 1)),
        replicas=int(status.get("replicas", 0)),
        ready=int(status.get("readyReplicas", 0)),
        available=int(status.get("availableReplicas", 0)),
        updated=int(status.get("updatedReplicas", 0)),
    )


def parse_hpa(obj: Mapping[str, Any]) -> HpaStatus:
    """An autoscaling/v2 HorizontalPodAutoscaler (the one KEDA creates, `keda-hpa-<name>`)."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    metric_name = None
    target_average = None
    for metric in spec.get("metrics") or ():
        if metric.get("type") == "External":
            external = metric["external"]
            metric_name = external["metric"]["name"]
            target = external.get("target") or {}
            if "averageValue" in target:
                target_average = parse_quantity(target["averageValue"])
            break
    metric_average = None
    for current in status.get("currentMetrics") or ():
        if current.get("type") == "External" and (
            metric_name is None or current["external"]["metric"]["name"] == metric_name
        ):
            value = current["external"].get("current") or {}
            if "averageValue" in value:
                metric_average = parse_quantity(value["averageValue"])
            elif "value" in value:
                metric_average = parse_quantity(value["value"])
            break
    conditions = status.get("conditions")
    active = _condition(conditions, "ScalingActive")
    return HpaStatus(
        name=obj["metadata"]["name"],
        min_replicas=int(spec.get("minReplicas", 1)),
        max_replicas=int(spec["maxReplicas"]),
        current_replicas=int(status.get("currentReplicas", 0)),
        desired_replicas=int(status.get("desiredReplicas", 0)),
        metric_name=metric_name,
        metric_average=metric_average,
        target_average=target_average,
        scaling_active=str(active.get("status", "Unknown")),
        scaling_limited=_status_flag(conditions, "ScalingLimited"),
        reason=str(active.get("reason", "")),
    )


def parse_scaled_object(obj: Mapping[str, Any]) -> ScaledObjectStatus:
    """A keda.sh/v1alpha1 ScaledObject (spec for the trigger, status for the conditions)."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    name = obj["metadata"]["name"]
    triggers: Sequence[Mapping[str, Any]] = spec.get("triggers") or ()
    trigger: Mapping[str, Any] = next((t for t in triggers if t.get("type") == "rabbitmq"), {})
    metadata = trigger.get("metadata") or {}
    raw_value = metadata.get("value", metadata.get("queueLength"))
    conditions = status.get("conditions")
    return ScaledObjectStatus(
        name=name,
        target_name=(spec.get("scaleTargetRef") or {}).get("name", ""),
        hpa_name=status.get("hpaName") or f"keda-hpa-{name}",
        min_replicas=int(spec.get("minReplicaCount", 0)),
        max_replicas=int(spec.get("maxReplicaCount", 100)),
        ready=_status_flag(conditions, "Ready"),
        active=_status_flag(conditions, "Active"),
        fallback=_status_flag(conditions, "Fallback"),
        paused=_status_flag(conditions, "Paused"),
        last_active_time=status.get("lastActiveTime"),
        queue_name=metadata.get("queueName"),
        trigger_value=float(raw_value) if raw_value is not None else None,
    )


def select_scaled_object(
    items: Sequence[Mapping[str, Any]], deployment_name: str
) -> Mapping[str, Any] | None:
    """The ScaledObject whose scaleTargetRef names the Deployment."""
    for item in items:
        if ((item.get("spec") or {}).get("scaleTargetRef") or {}).get("name") == deployment_name:
            return item
    return None


@dataclass(frozen=True)
class Snapshot:
    """Everything observed at one instant."""

    at: datetime
    deployment: DeploymentStatus
    hpa: HpaStatus | None
    scaled_object: ScaledObjectStatus | None
    depth: QueueDepth | None


def snapshot_row(snapshot: Snapshot, started: datetime) -> TimelineRow:
    """The timeline row of a snapshot: management-API depth, else the HPA's external metric."""
    depth: int | None = None
    source = ""
    rate = None
    if snapshot.depth is not None:
        depth, source, rate = (
            snapshot.depth.messages,
            snapshot.depth.source,
            snapshot.depth.ack_rate,
        )
    elif snapshot.hpa is not None and snapshot.hpa.metric_total is not None:
        depth, source = round(snapshot.hpa.metric_total), HPA_DEPTH_SOURCE
    active = snapshot.scaled_object.active if snapshot.scaled_object else ""
    return TimelineRow(
        t_s=(snapshot.at - started).total_seconds(),
        queue_depth=depth,
        depth_source=source,
        desired_replicas=snapshot.deployment.spec_replicas,
        running_replicas=snapshot.deployment.ready,
        records_per_s=rate,
        phase="active" if active == "True" else ("idle" if active == "False" else ""),
    )


TABLE_COLUMNS: Final = (
    "TIME",
    "DEPTH",
    "SOURCE",
    "SO-READY",
    "SO-ACTIVE",
    "HPA-DESIRED",
    "HPA-CURRENT",
    "DEPLOY-SPEC",
    "READY",
    "ACK/S",
)
_WIDTHS: Final = (9, 8, 22, 9, 10, 12, 12, 12, 6, 8)


def table_header() -> str:
    """Column titles of the live table (like `kubectl get -w`)."""
    return "".join(title.ljust(width) for title, width in zip(TABLE_COLUMNS, _WIDTHS, strict=True))


def table_line(snapshot: Snapshot, row: TimelineRow) -> str:
    """One live-table line."""
    so, hpa = snapshot.scaled_object, snapshot.hpa
    cells = (
        snapshot.at.strftime("%H:%M:%S"),
        "" if row.queue_depth is None else str(row.queue_depth),
        row.depth_source or "-",
        so.ready if so else "-",
        so.active if so else "-",
        str(hpa.desired_replicas) if hpa else "-",
        str(hpa.current_replicas) if hpa else "-",
        str(snapshot.deployment.spec_replicas),
        str(snapshot.deployment.ready),
        "" if row.records_per_s is None else f"{row.records_per_s:.0f}",
    )
    return "".join(cell.ljust(width) for cell, width in zip(cells, _WIDTHS, strict=True))


def state_key(line: str) -> str:
    """The part of a table line that matters for "changed?" (everything after the clock)."""
    return line[_WIDTHS[0] :]


class ClusterObserver:
    """Fetches the Deployment, ScaledObject and HPA of a release as raw API dicts."""

    def __init__(
        self,
        namespace: str,
        release: str,
        *,
        deployment: str | None = None,
        context: str | None = None,
    ) -> None:
        from kubernetes import client, config

        try:
            config.load_kube_config(context=context)
        except config.ConfigException:
            config.load_incluster_config()
        self.namespace = namespace
        self.release = release
        self.deployment_name = deployment
        self._apps = client.AppsV1Api()
        self._autoscaling = client.AutoscalingV2Api()
        self._custom = client.CustomObjectsApi()

    @staticmethod
    def _raw(response: Any) -> Any:
        return json.loads(response.data)

    def deployment(self) -> Mapping[str, Any]:
        """The consumer Deployment (by name, or by the chart's standard labels)."""
        if self.deployment_name:
            return self._raw(
                self._apps.read_namespaced_deployment(
                    self.deployment_name, self.namespace, _preload_content=False
                )
            )
        listing = self._raw(
            self._apps.list_namespaced_deployment(
                self.namespace,
                label_selector=CONSUMER_SELECTOR.format(release=self.release),
                _preload_content=False,
            )
        )
        items = listing.get("items") or []
        if not items:
            raise LookupError(
                f"no Deployment labelled {CONSUMER_SELECTOR.format(release=self.release)} in "
                f"namespace {self.namespace}; pass --deployment NAME"
            )
        self.deployment_name = items[0]["metadata"]["name"]
        first: Mapping[str, Any] = items[0]
        return first

    def scaled_object(self, deployment_name: str) -> Mapping[str, Any] | None:
        """The ScaledObject targeting the Deployment, if KEDA is in use."""
        from kubernetes.client.exceptions import ApiException

        try:
            listing = self._custom.list_namespaced_custom_object(
                "keda.sh", "v1alpha1", self.namespace, "scaledobjects"
            )
        except ApiException as exc:
            if exc.status == 404:  # KEDA's CRDs are not installed
                return None
            raise
        items = listing.get("items") if isinstance(listing, Mapping) else None
        return select_scaled_object(items or [], deployment_name)

    def hpa(self, name: str) -> Mapping[str, Any] | None:
        """The HPA by name, or None while KEDA has not created it."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self._raw(
                self._autoscaling.read_namespaced_horizontal_pod_autoscaler(
                    name, self.namespace, _preload_content=False
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


def take_snapshot(
    observer: ClusterObserver, read_depth: Callable[[], QueueDepth | None]
) -> Snapshot:
    """Fetch and parse all three objects and the queue depth once."""
    deployment = parse_deployment(observer.deployment())
    raw_so = observer.scaled_object(deployment.name)
    scaled_object = parse_scaled_object(raw_so) if raw_so is not None else None
    raw_hpa = observer.hpa(scaled_object.hpa_name) if scaled_object else None
    return Snapshot(
        at=datetime.now().astimezone(),
        deployment=deployment,
        hpa=parse_hpa(raw_hpa) if raw_hpa is not None else None,
        scaled_object=scaled_object,
        depth=read_depth(),
    )


def run_observe(
    *,
    namespace: str,
    release: str,
    out_dir: Path,
    read_depth: Callable[[], QueueDepth | None],
    deployment: str | None = None,
    context: str | None = None,
    interval_s: float = 2.0,
    duration_s: float | None = None,
    stream: TextIO,
) -> int:
    """Poll until Ctrl-C or `duration_s`; print changed lines; write timeline.csv and .png."""
    observer = ClusterObserver(namespace, release, deployment=deployment, context=context)
    started = datetime.now().astimezone()
    deadline = None if duration_s is None else time.monotonic() + duration_s
    previous = ""
    print(table_header(), file=stream, flush=True)
    with TimelineWriter(out_dir / "timeline.csv") as writer:
        try:
            while deadline is None or time.monotonic() < deadline:
                snapshot = take_snapshot(observer, read_depth)
                row = snapshot_row(snapshot, started)
                writer.write(row)
                line = table_line(snapshot, row)
                if state_key(line) != previous:
                    print(line, file=stream, flush=True)
                    previous = state_key(line)
                time.sleep(interval_s)
        except KeyboardInterrupt:
            print("interrupted; writing the timeline", file=stream)
        rows = writer.rows
    if rows:
        stats = summarize_timeline(rows)
        plot_timeline(
            rows,
            out_dir / "timeline.png",
            title=f"creditstream observe: {namespace}/{observer.deployment_name}",
            subtitle=f"peak depth {stats.peak_depth}, peak ready {stats.peak_running}",
        )
        print(f"timeline: {out_dir / 'timeline.csv'} and {out_dir / 'timeline.png'}", file=stream)
    return 0
