"""pod_runner reproduces every field the chart renders, and refuses the ones it cannot."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from chart_checks import component, expand_env_value
from pod_runner import UnsupportedField, run_spec

from conftest import CASE_PARAMS, ValuesCase, effective_values, external_secrets

pytestmark = [pytest.mark.chart, pytest.mark.timeout(120)]

Docs = list[dict[str, Any]]


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_every_rendered_pod_translates(
    rendered_docs: dict[str, Docs], case: ValuesCase, tmp_path: Path
) -> None:
    docs = list(rendered_docs[case.id])
    # NOTE: Secrets the user creates beforehand (existingSecret) hold the keys the pods read.
    external = external_secrets(effective_values(case))
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for d in docs
        if d["kind"] in {"Deployment", "Job", "Pod"}
        for c in (d["spec"] if d["kind"] == "Pod" else d["spec"]["template"]["spec"])["containers"]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    for name in external:
        keys = {r["key"] for r in refs if r["name"] == name}
        docs.append({"kind": "Secret", "metadata": {"name": name}, "data": dict.fromkeys(keys, "")})
    claims = {
        v["persistentVolumeClaim"]["claimName"]: tmp_path
        for d in docs
        if d["kind"] == "Job"
        for v in d["spec"]["template"]["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    workloads = [d for d in docs if d["kind"] in {"Deployment", "Job", "Pod"}]
    assert workloads
    for workload in workloads:
        spec = run_spec(docs, workload, name="probe", claims=claims)
        assert spec.image and "--read-only" in spec.args and "--cap-drop=ALL" in spec.args


@pytest.mark.parametrize(
    ("where", "field", "value"),
    [
        pytest.param("pod", "hostNetwork", True, id="pod-hostNetwork"),
        pytest.param("container", "lifecycle", {"preStop": {}}, id="container-lifecycle"),
        pytest.param("securityContext", "runAsNonRoot", False, id="known-field-kept"),
        pytest.param("securityContext", "procMount", "Unmasked", id="container-procMount"),
    ],
)
def test_a_field_the_runner_does_not_reproduce_is_refused(
    rendered_docs: dict[str, Docs], where: str, field: str, value: Any
) -> None:
    docs = copy.deepcopy(rendered_docs["defaults"])
    (deployment,) = component(docs, "Deployment", "consumer")
    pod = deployment["spec"]["template"]["spec"]
    target = {
        "pod": pod,
        "container": pod["containers"][0],
        "securityContext": pod["containers"][0]["securityContext"],
    }[where]
    target[field] = value
    if field == "runAsNonRoot":  # a field it knows: translated, not refused
        run_spec(docs, deployment, name="probe")
        return
    with pytest.raises(UnsupportedField, match=field):
        run_spec(docs, deployment, name="probe")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("$(POD_IP),127.0.0.1", "10.1.2.3,127.0.0.1", id="defined-before"),
        pytest.param("$(LATER)", "$(LATER)", id="undefined-left-as-written"),
        pytest.param("$$(POD_IP)", "$(POD_IP)", id="escaped"),
        pytest.param("a$$b", "a$b", id="double-dollar"),
    ],
)
def test_env_values_expand_as_the_kubelet_does(value: str, expected: str) -> None:
    assert expand_env_value(value, {"POD_IP": "10.1.2.3"}) == expected
