"""`creditstream observe` parsing and timeline logic on recorded Kubernetes API objects."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from creditstream.autoscale.queue_depth import parse_management_queue
from creditstream.observe import (
    HPA_DEPTH_SOURCE,
    Snapshot,
    parse_deployment,
    parse_hpa,
    parse_quantity,
    parse_scaled_object,
    select_scaled_object,
    snapshot_row,
    state_key,
    table_header,
    table_line,
)
from creditstream.timeline import summarize_timeline

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
K8S = FIXTURES / "k8s"
KEDA_CRD = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "schemas"
    / "keda"
    / ("keda.sh_scaledobjects.yaml")
)
MOMENTS = ("idle", "burst", "cooldown")
SO_FILE = {
    "idle": "scaledobject_idle",
    "burst": "scaledobject_active",
    "cooldown": "scaledobject_cooldown",
}


def load(name: str) -> Any:
    return json.loads((K8S / f"{name}.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("500", 500.0, id="plain"),
        pytest.param("12k", 12_000.0, id="kilo"),
        pytest.param("1500m", 1.5, id="milli"),
        pytest.param("1Ki", 1024.0, id="binary"),
        pytest.param("2e3", 2000.0, id="exponent"),
        pytest.param(7, 7.0, id="int"),
        pytest.param("1E", 1e18, id="exa-not-an-exponent"),
        pytest.param("1E3", 1000.0, id="exponent-upper"),
        pytest.param("1Pi", 2.0**50, id="pebi"),
        pytest.param("2Ei", 2.0**61, id="exbi"),
        pytest.param("1P", 1e15, id="peta"),
        pytest.param("1.5Gi", 1.5 * 2**30, id="fraction"),
    ],
)
def test_parse_quantity(text: str | int, expected: float) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["1GB", "Gi", "1.5.3", "lots", "1e"])
def test_parse_quantity_names_what_is_no_quantity(text: str) -> None:
    with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("moment", "spec", "ready"),
    [
        pytest.param("idle", 0, 0, id="idle-zero-counts-omitted"),
        pytest.param("burst", 5, 2, id="burst"),
        pytest.param("cooldown", 1, 1, id="cooldown"),
    ],
)
def test_parse_deployment(moment: str, spec: int, ready: int) -> None:
    status = parse_deployment(load(f"deployment_{moment}"))
    assert (status.name, status.spec_replicas, status.ready) == (
        "creditstream-consumer",
        spec,
        ready,
    )


def test_parse_hpa_burst_reads_external_metric_and_limit() -> None:
    hpa = parse_hpa(load("hpa_burst"))
    assert (hpa.current_replicas, hpa.desired_replicas) == (1, 5)
    assert hpa.metric_name == "s0-rabbitmq-creditstream-requests"
    assert hpa.target_average == 500.0
    assert hpa.metric_total == 12_000.0
    assert hpa.scaling_limited == "True"
    assert hpa.min_replicas == 1 and hpa.max_replicas == 8


def test_parse_hpa_idle_has_no_metric() -> None:
    hpa = parse_hpa(load("hpa_idle"))
    assert hpa.metric_total is None
    assert (hpa.scaling_active, hpa.reason) == ("False", "ScalingDisabled")


@pytest.mark.parametrize(
    ("moment", "active"),
    [
        pytest.param("idle", "False", id="idle"),
        pytest.param("burst", "True", id="burst"),
        pytest.param("cooldown", "False", id="cooldown"),
    ],
)
def test_parse_scaled_object(moment: str, active: str) -> None:
    so = parse_scaled_object(load(SO_FILE[moment]))
    assert so.active == active
    assert so.ready == "True" and so.paused == "Unknown"
    assert so.hpa_name == "keda-hpa-creditstream-consumer"
    assert so.queue_name == "creditstream.requests"
    assert so.trigger_value == 500.0
    assert (so.min_replicas, so.max_replicas) == (0, 8)


def test_select_scaled_object_by_scale_target() -> None:
    items = load("scaledobject_list")["items"]
    chosen = select_scaled_object(items, "creditstream-consumer")
    assert chosen is not None and chosen["metadata"]["name"] == "creditstream-consumer"
    assert select_scaled_object(items, "missing") is None


def test_deployment_list_item_parses_like_a_get() -> None:
    item = load("deployment_list_consumer")["items"][0]
    assert parse_deployment(item) == parse_deployment(load("deployment_burst"))


def snapshot(moment: str, at: datetime, *, with_depth: bool) -> Snapshot:
    depth = None
    if with_depth:
        depth = parse_management_queue(
            json.loads((FIXTURES / "rabbitmq" / "queue_quorum_with_unacked.json").read_text())
        )
    return Snapshot(
        at=at,
        deployment=parse_deployment(load(f"deployment_{moment}")),
        hpa=parse_hpa(load(f"hpa_{moment}")),
        scaled_object=parse_scaled_object(load(SO_FILE[moment])),
        depth=depth,
    )


def test_row_prefers_management_api_depth() -> None:
    start = datetime(2026, 11, 28, 9, 16, tzinfo=UTC)
    row = snapshot_row(snapshot("burst", start + timedelta(seconds=4), with_depth=True), start)
    assert (row.t_s, row.queue_depth, row.depth_source) == (4.0, 30, "management-api")
    assert (row.desired_replicas, row.running_replicas, row.phase) == (5, 2, "active")


def test_row_falls_back_to_hpa_metric_labelled() -> None:
    start = datetime(2026, 11, 28, 9, 16, tzinfo=UTC)
    row = snapshot_row(snapshot("burst", start, with_depth=False), start)
    assert (row.queue_depth, row.depth_source) == (12_000, HPA_DEPTH_SOURCE)
    idle = snapshot_row(snapshot("idle", start, with_depth=False), start)
    assert (idle.queue_depth, idle.depth_source, idle.phase) == (None, "", "idle")


def test_cycle_timeline_scales_up_and_returns_to_zero() -> None:
    start = datetime(2026, 11, 28, 9, 15, tzinfo=UTC)
    moments = ["idle", "burst", "cooldown", "idle"]
    rows = [
        snapshot_row(snapshot(m, start + timedelta(seconds=10 * i), with_depth=False), start)
        for i, m in enumerate(moments)
    ]
    stats = summarize_timeline(rows)
    assert stats.peak_desired == 5 and stats.peak_running == 2
    assert stats.scaled_above_one and stats.returned_to_zero
    assert stats.duration_s == 30.0


def test_table_prints_only_changes() -> None:
    start = datetime(2026, 11, 28, 9, 15, tzinfo=UTC)
    out = io.StringIO()
    previous = ""
    for i, moment in enumerate(["idle", "idle", "burst", "burst", "cooldown"]):
        snap = snapshot(moment, start + timedelta(seconds=i), with_depth=False)
        line = table_line(snap, snapshot_row(snap, start))
        if state_key(line) != previous:
            out.write(line + "\n")
            previous = state_key(line)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert table_header().split() == [
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
    ]
    assert lines[1].split()[1:] == ["12000", HPA_DEPTH_SOURCE, "True", "True", "5", "1", "5", "2"]


# --- the fixtures themselves are real API shapes ------------------------------------------------


@pytest.mark.parametrize("moment", [pytest.param(m, id=m) for m in MOMENTS])
def test_scaled_object_fixtures_match_keda_crd_schema(moment: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    yaml = pytest.importorskip("yaml")
    if not KEDA_CRD.exists():
        pytest.skip(f"KEDA CRD schema not found at {KEDA_CRD}")
    crd = yaml.safe_load(KEDA_CRD.read_text(encoding="utf-8"))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = version["schema"]["openAPIV3Schema"]
    jsonschema.validate(load(SO_FILE[moment]), schema)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


@pytest.mark.parametrize(
    ("name", "model"),
    [pytest.param(f"deployment_{m}", "V1Deployment", id=f"deployment-{m}") for m in MOMENTS]
    + [pytest.param(f"hpa_{m}", "V2HorizontalPodAutoscaler", id=f"hpa-{m}") for m in MOMENTS],
)
def test_core_fixtures_round_trip_through_kubernetes_models(name: str, model: str) -> None:
    """Every key is a real field: the client's models drop unknown keys, so a typo would show."""
    client = pytest.importorskip("kubernetes.client")
    api = client.ApiClient()

    text = (K8S / f"{name}.json").read_text(encoding="utf-8")
    obj = api.deserialize(text, model, "application/json")
    again = json.loads(json.dumps(api.sanitize_for_serialization(obj)))
    assert _normalize_times(again) == _normalize_times(_without_nulls(load(name)))


def _normalize_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normalize_times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize_times(v) for v in value]
    if isinstance(value, str) and len(value) >= 20 and value[4] == "-" and value[10] == "T":
        return value.replace("+00:00", "Z")
    return value
