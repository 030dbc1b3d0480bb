"""Chart security (issue 15): the management API only from KEDA's namespace, only safe volume
kinds for the model override, the Pod Security Standard label documented for the namespace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chart_checks import by_kind, pod_spec

from conftest import CHART, helm_template, parse_docs

pytestmark = [pytest.mark.chart, pytest.mark.timeout(300)]

PSS_LABEL = "pod-security.kubernetes.io/enforce=restricted"


def _broker_policy(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (policy,) = [
        d
        for d in by_kind(docs, "NetworkPolicy")
        if d["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == "broker"
    ]
    return policy


def test_management_api_is_reachable_only_from_kedas_namespace(helm: Path) -> None:
    docs = parse_docs(helm_template(helm).stdout)
    rules = _broker_policy(docs)["spec"]["ingress"]
    management = [r for r in rules if {"port": "management"} in r.get("ports", [])]
    assert management, "some rule opens the management port"
    for rule in management:
        sources = rule["from"]
        assert all("namespaceSelector" in s and "podSelector" not in s for s in sources), rule


@pytest.mark.parametrize(
    "volume",
    [
        pytest.param("consumer.modelOverride.volume.configMap.name=my-model", id="configMap"),
        pytest.param(
            "consumer.modelOverride.volume.persistentVolumeClaim.claimName=models", id="pvc"
        ),
        pytest.param("consumer.modelOverride.volume.emptyDir.medium=Memory", id="emptyDir"),
        pytest.param("consumer.modelOverride.volume.image.reference=models:1", id="image"),
    ],
)
def test_model_override_accepts_safe_volume_kinds(helm: Path, volume: str) -> None:
    docs = parse_docs(helm_template(helm, sets=(volume,)).stdout)
    (deployment,) = [
        d
        for d in by_kind(docs, "Deployment")
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "consumer"
    ]
    spec = pod_spec(deployment)
    assert spec is not None
    kind = volume.split(".")[3]
    assert any(kind in v for v in spec["volumes"]), spec["volumes"]


@pytest.mark.parametrize(
    "sets",
    [
        pytest.param(("consumer.modelOverride.volume.hostPath.path=/etc",), id="hostPath"),
        pytest.param(("consumer.modelOverride.volume.nfs.server=nfs.example",), id="nfs"),
        pytest.param(
            (
                "consumer.modelOverride.volume.configMap.name=m",
                "consumer.modelOverride.volume.hostPath.path=/",
            ),
            id="configMap-plus-hostPath",
        ),
        pytest.param(
            (
                "consumer.modelOverride.volume.configMap.name=m",
                "consumer.modelOverride.volume.emptyDir.medium=Memory",
            ),
            id="two-kinds",
        ),
    ],
)
def test_model_override_refuses_other_volume_kinds(helm: Path, sets: tuple[str, ...]) -> None:
    result = helm_template(helm, sets=sets, check=False)
    assert result.returncode != 0, f"helm accepted {sets}"
    assert "modelOverride" in result.stderr, result.stderr


def test_namespace_pod_security_label_is_documented() -> None:
    assert PSS_LABEL in (CHART / "README.md").read_text(encoding="utf-8")
    assert PSS_LABEL in (CHART / "templates" / "NOTES.txt").read_text(encoding="utf-8")
