"""Rendered objects: Kubernetes/KEDA schemas, checkov, targeted contract assertions, drift."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import render_manifests
import yaml
from chart_checks import (
    by_kind,
    component,
    find,
    grace_period_problems,
    outbox_relay_problems,
    plain_credential_problems,
    probe_problems,
    queue_name_problems,
    replicas_problems,
    scaled_deployments,
    secret_ref_problems,
    trigger_auth_problems,
)

from conftest import (
    CASE_PARAMS,
    CASES,
    CHART,
    REPO_ROOT,
    SHARED,
    ValuesCase,
    effective_values,
    external_secrets,
    helm_template,
    parse_docs,
)

pytestmark = [pytest.mark.chart, pytest.mark.timeout(300)]

KUBERNETES_VERSIONS = ["1.30.0", "1.34.0"]
KEDA_SCHEMAS = SHARED / "schemas" / "keda"
SKAFFOLD_SCHEMA = SHARED / "schemas" / "skaffold" / "v4beta14.json"
CRD_FILES = {
    "ScaledObject": "keda.sh_scaledobjects.yaml",
    "TriggerAuthentication": "keda.sh_triggerauthentications.yaml",
}
RENDERED_DIR = REPO_ROOT / "k8s" / "rendered"
Docs = list[dict[str, Any]]


# --- schemas -----------------------------------------------------------------------------------
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_objects_valid_against_kubernetes_schemas_strict(
    rendered_docs: dict[str, Docs], case: ValuesCase, version: str
) -> None:
    checked, errors = 0, []
    for doc in rendered_docs[case.id]:
        if doc["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/")):
            continue  # CRDs: validated below against their own schemas
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']} {doc['metadata']['name']}: {exc.message}")
        checked += 1
    assert checked >= 8
    assert errors == []


def test_strict_kubernetes_validation_rejects_an_unknown_field(
    rendered_docs: dict[str, Docs],
) -> None:
    deployment = copy.deepcopy(by_kind(rendered_docs["defaults"], "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.34.0", strict=True)


def _strict(schema: Any) -> Any:
    """CRD openAPIV3Schema -> JSON Schema rejecting unknown fields (as structural pruning)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def _keda_validator(kind: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((KEDA_SCHEMAS / CRD_FILES[kind]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def _keda_errors(doc: dict[str, Any]) -> list[str]:
    body = {k: v for k, v in doc.items() if k != "metadata"}  # metadata: checked by the API server
    validator = _keda_validator(doc["kind"])
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)
    ]


def _require_keda_schemas() -> None:
    if not KEDA_SCHEMAS.is_dir():
        pytest.skip(f"KEDA CRD schemas not found at {KEDA_SCHEMAS} (shared/ missing)")


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_keda_objects_valid_against_keda_crds(
    rendered_docs: dict[str, Docs], case: ValuesCase
) -> None:
    _require_keda_schemas()
    docs = rendered_docs[case.id]
    keda = [d for d in docs if d["apiVersion"] == "keda.sh/v1alpha1"]
    values = effective_values(case)
    if values["autoscaling"]["enabled"]:
        # NOTE: one ScaledObject per scaled workload: the consumer, or each stage (issue 11).
        workloads = 1
        if values["pipeline"]["mode"] == "staged":
            workloads = 3 + int(values["pipeline"]["shadow"]["enabled"])
        assert sorted(d["kind"] for d in keda) == [
            *["ScaledObject"] * workloads,
            "TriggerAuthentication",
        ]
    else:
        assert keda == []
    for doc in keda:
        assert _keda_errors(doc) == [], doc["kind"]


def test_keda_crd_validation_rejects_a_misspelt_field(rendered_docs: dict[str, Docs]) -> None:
    _require_keda_schemas()
    scaled = copy.deepcopy(by_kind(rendered_docs["defaults"], "ScaledObject")[0])
    scaled["spec"]["coolDownPeriod"] = 30
    assert any("coolDownPeriod" in e for e in _keda_errors(scaled))


def test_servicemonitor_shape(rendered_docs: dict[str, Docs]) -> None:
    """No Prometheus Operator CRD is available here: check the fields the operator needs."""
    (monitor,) = by_kind(rendered_docs["production"], "ServiceMonitor")
    service_labels = {
        tuple(sorted(s["metadata"]["labels"].items()))
        for s in by_kind(rendered_docs["production"], "Service")
    }
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert any(set(selector.items()) <= set(labels) for labels in service_labels)
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_skaffold_config_valid_against_its_schema() -> None:
    if not SKAFFOLD_SCHEMA.is_file():
        pytest.skip(f"skaffold schema not found at {SKAFFOLD_SCHEMA} (shared/ missing)")
    schema = json.loads(SKAFFOLD_SCHEMA.read_text())
    configs = [d for d in yaml.safe_load_all((REPO_ROOT / "skaffold.yaml").read_text()) if d]
    assert configs
    for config in configs:
        assert config["apiVersion"] == "skaffold/v4beta14"
        errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(config)]
        assert errors == []
    (config,) = configs
    images = {a["image"] for a in config["build"]["artifacts"]}
    release = config["deploy"]["helm"]["releases"][0]
    templated = json.dumps(release["setValueTemplates"])
    for image in images:
        key = image.replace("/", "_").replace("-", "_").replace(".", "_").replace(":", "_")
        assert f"IMAGE_REPO_{key}" in templated and f"IMAGE_TAG_{key}" in templated
    assert {p["name"] for p in config["profiles"]} >= {"kind", "minikube"}


def test_kind_config_pins_a_kubernetes_version_keda_supports() -> None:
    config = yaml.safe_load((REPO_ROOT / "k8s" / "kind-cluster.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    images = {n["image"] for n in config["nodes"]}
    assert len(images) == 1
    (image,) = images
    assert image.startswith("kindest/node:v1.34."), image
    assert "@sha256:" in image


# --- checkov -----------------------------------------------------------------------------------
CHECKOV = REPO_ROOT / ".tools" / "checkov-venv" / "bin" / "checkov"


@pytest.fixture(scope="session")
def checkov_binary() -> Path:
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "fetch_tools.py"), "checkov"],
        check=True,
        timeout=900,
    )
    return CHECKOV


def _run_checkov(checkov: Path, directory: Path) -> dict[str, Any]:
    result = subprocess.run(
        [
            str(checkov),
            "--directory",
            str(directory),
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--quiet",
            "--compact",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


def test_checkov_passes_on_every_rendered_case(
    checkov_binary: Path, rendered: dict[str, str], tmp_path: Path
) -> None:
    """One checkov run over all cases (it is slow); skips are annotated and documented."""
    for case_id, text in rendered.items():
        (tmp_path / f"{case_id}.yaml").write_text(text)
    summary = _run_checkov(checkov_binary, tmp_path)
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for c in summary.get("results", {}).get("failed_checks", [])
    ]
    assert failed == []
    assert summary["summary"]["passed"] > 500


def test_checkov_catches_a_container_without_limits(
    checkov_binary: Path, rendered_docs: dict[str, Docs], tmp_path: Path
) -> None:
    docs = copy.deepcopy(rendered_docs["defaults"])
    deployment = by_kind(docs, "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0].pop("resources")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"].pop(
        "readOnlyRootFilesystem"
    )
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump_all([deployment]))
    failed = {
        c["check_id"] for c in _run_checkov(checkov_binary, tmp_path)["results"]["failed_checks"]
    }
    assert {"CKV_K8S_11", "CKV_K8S_13", "CKV_K8S_22"} <= failed


# --- targeted assertions -------------------------------------------------------------------------
CheckFn = Callable[[Docs], list[str]]
CHECKS: list[Any] = [
    pytest.param(queue_name_problems, id="keda-queue-is-consumer-queue"),
    pytest.param(replicas_problems, id="no-replicas-under-keda"),
    pytest.param(plain_credential_problems, id="no-credentials-in-args-or-plain-env"),
    pytest.param(trigger_auth_problems, id="keda-host-from-secret"),
    pytest.param(grace_period_problems, id="grace-period-exceeds-batch"),
    pytest.param(probe_problems, id="probes-on-real-endpoints"),
    pytest.param(outbox_relay_problems, id="relay-while-consumers-at-zero"),
]


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_contract_assertions(
    rendered_docs: dict[str, Docs], case: ValuesCase, check: CheckFn
) -> None:
    assert check(rendered_docs[case.id]) == []


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_every_secret_reference_resolves(rendered_docs: dict[str, Docs], case: ValuesCase) -> None:
    values = effective_values(case)
    assert secret_ref_problems(rendered_docs[case.id], external_secrets(values)) == []


def test_autoscaling_off_gives_a_fixed_replica_count(rendered_docs: dict[str, Docs]) -> None:
    (deployment,) = component(rendered_docs["autoscaling-off"], "Deployment", "consumer")
    assert deployment["spec"]["replicas"] == 3
    (deployment,) = component(rendered_docs["defaults"], "Deployment", "consumer")
    assert "replicas" not in deployment["spec"]


def test_scaledobject_carries_the_values_contract(rendered_docs: dict[str, Docs]) -> None:
    values = effective_values(CASES[0])["autoscaling"]
    (scaled,) = by_kind(rendered_docs["defaults"], "ScaledObject")
    spec = scaled["spec"]
    for key in (
        "pollingInterval",
        "cooldownPeriod",
        "initialCooldownPeriod",
        "minReplicaCount",
        "maxReplicaCount",
    ):
        assert spec[key] == values[key], key
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == values["behavior"]
    # Backlog and steady traffic: the HPA takes the larger of the two proposals.
    queue_length, message_rate = spec["triggers"]
    assert queue_length["metadata"]["mode"] == "QueueLength"
    assert float(queue_length["metadata"]["value"]) == values["queueLength"]
    assert float(queue_length["metadata"]["activationValue"]) == values["activationQueueLength"]
    assert message_rate["metadata"]["mode"] == "MessageRate"
    assert float(message_rate["metadata"]["value"]) == values["messageRate"]
    assert float(message_rate["metadata"]["activationValue"]) == values["activationMessageRate"]
    for trigger in (queue_length, message_rate):
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["protocol"] == "http"  # MessageRate needs the management API
        assert (
            trigger["metadata"]["queueName"] == effective_values(CASES[0])["consumer"]["queueName"]
        )
        assert trigger["authenticationRef"] == queue_length["authenticationRef"]


def test_message_rate_trigger_can_be_left_out(helm_binaries: dict[str, Path]) -> None:
    out = helm_template(helm_binaries["3"], sets=("autoscaling.messageRate=null",)).stdout
    (scaled,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "ScaledObject"]
    assert [t["metadata"]["mode"] for t in scaled["spec"]["triggers"]] == ["QueueLength"]


def test_security_defaults_on_every_pod(rendered_docs: dict[str, Docs]) -> None:
    for case_id, docs in rendered_docs.items():
        for doc in docs:
            if doc["kind"] not in {"Deployment", "StatefulSet", "Job", "Pod"}:
                continue
            spec = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
            where = f"{case_id}: {doc['kind']} {doc['metadata']['name']}"
            # NOTE: the one exception: a clustered broker's own account, for peer discovery
            # (test_broker_cluster_chart.py checks it is the only one, with a get-endpoints Role)
            clustered_broker = (
                doc["kind"] == "StatefulSet"
                and doc["metadata"]["name"].endswith("-rabbitmq")
                and doc["spec"]["replicas"] > 1
            )
            assert spec["automountServiceAccountToken"] is (clustered_broker), where
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
            for container in spec["containers"] + spec.get("initContainers", []):
                sc = container["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                assert "limits" in container["resources"], where


def test_network_policies_cover_every_pod(rendered_docs: dict[str, Docs]) -> None:
    for case_id, docs in rendered_docs.items():
        selectors = [
            p["spec"]["podSelector"]["matchLabels"] for p in by_kind(docs, "NetworkPolicy")
        ]
        for doc in docs:
            if doc["kind"] not in {"Deployment", "StatefulSet", "Job", "Pod"}:
                continue
            labels = (
                doc["metadata"] if doc["kind"] == "Pod" else doc["spec"]["template"]["metadata"]
            )["labels"]
            assert any(set(s.items()) <= set(labels.items()) for s in selectors), (
                f"{case_id}: {doc['kind']} {doc['metadata']['name']} has no NetworkPolicy"
            )


def test_broker_secret_survives_upgrades_and_never_uses_guest(
    rendered_docs: dict[str, Docs],
) -> None:
    docs = rendered_docs["defaults"]
    secret = next(s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("-rabbitmq"))
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    (broker,) = by_kind(docs, "StatefulSet")
    env = {e["name"]: e for e in broker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RABBITMQ_DEFAULT_USER"]["value"] != "guest"
    assert "secretKeyRef" in env["RABBITMQ_DEFAULT_PASS"]["valueFrom"]


def test_helm_test_hook_runs_the_smoke_test(rendered_docs: dict[str, Docs]) -> None:
    (pod,) = [p for p in by_kind(rendered_docs["defaults"], "Pod")]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    assert container["command"] + container["args"] == [
        "creditstream",
        "smoke-test",
        "--timeout",
        "60",
    ]


def test_producer_job_limits(rendered_docs: dict[str, Docs]) -> None:
    (job,) = by_kind(rendered_docs["defaults"], "Job")
    spec = job["spec"]
    assert spec["backoffLimit"] == 3
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert spec["activeDeadlineSeconds"] == 1800
    container = spec["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["produce", "--synthetic"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert float(env["CREDITSTREAM_BROKER_WAIT_S"]) >= 60


def test_staged_mode_scales_each_stage_on_its_own_queue(rendered_docs: dict[str, Docs]) -> None:
    """pipeline.mode=staged: one Deployment + ScaledObject per stage (issue 11), shadow too."""
    docs = rendered_docs["staged"]
    values = effective_values(next(c for c in CASES if c.id == "staged"))
    prefix = values["pipeline"]["stagePrefix"]
    expected = {
        "stage-preprocess": (["stage", "preprocess"], f"{prefix}.preprocess"),
        "stage-features": (["stage", "features"], f"{prefix}.features"),
        "stage-score": (["stage", "score"], f"{prefix}.score"),
        "stage-score-shadow": (["stage", "score", "--shadow"], f"{prefix}.score.shadow"),
    }
    found = {}
    for scaled, deployment in scaled_deployments(docs):
        assert deployment is not None
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        name = deployment["metadata"]["name"].split("creditstream-", 1)[1]
        queues = {t["metadata"]["queueName"] for t in scaled["spec"]["triggers"]}
        found[name] = (container["args"], *queues)
        stage = deployment["spec"]["selector"]["matchLabels"]["creditstream.io/stage"]
        assert (
            deployment["spec"]["template"]["metadata"]["labels"]["creditstream.io/stage"] == stage
        )
    assert found == expected
    shadow = find(docs, "Deployment", "cs-creditstream-stage-score-shadow")
    assert shadow is not None
    env = {
        e["name"]: e.get("value")
        for e in shadow["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["CREDITSTREAM_STAGE_MODEL_PATH"] == values["pipeline"]["shadow"]["modelPath"]
    assert queue_name_problems(docs) == []
    (job,) = by_kind(docs, "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][:3] == [
        "produce",
        "--pipeline",
        "staged",
    ]
    (settings,) = [
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-settings")
    ]
    assert settings["data"]["CREDITSTREAM_STAGE_PREFIX"] == prefix
    assert settings["data"]["CREDITSTREAM_STAGE_SHADOW"] == "true"


def _stage_reads_another_queue(docs: Docs) -> None:
    deployment = find(docs, "Deployment", by_kind(docs, "ScaledObject")[1]["metadata"]["name"])
    assert deployment is not None
    deployment["spec"]["template"]["spec"]["containers"][0]["args"] = ["stage", "score"]


def test_queue_check_knows_which_queue_a_stage_reads(rendered_docs: dict[str, Docs]) -> None:
    broken = _post_render(rendered_docs["staged"], _stage_reads_another_queue)
    problems = queue_name_problems(broken)
    assert problems, "a stage reading another queue than its trigger watches"
    for problem in problems:  # NOTE: one per trigger (QueueLength, MessageRate)
        assert "watches queue 'creditstream.stage.features'" in problem
        assert "reads 'creditstream.stage.score'" in problem


# --- negative tests: a broken manifest makes the checks fail ---------------------------------
def _post_render(docs: Docs, mutate: Callable[[Docs], None]) -> Docs:
    broken = copy.deepcopy(docs)
    mutate(broken)
    return broken


def _wrong_trigger_queue(docs: Docs) -> None:
    by_kind(docs, "ScaledObject")[0]["spec"]["triggers"][0]["metadata"]["queueName"] = (
        "creditstream.typo"
    )


def _drop_secret_key(docs: Docs) -> None:
    secret = next(s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("-rabbitmq"))
    del secret["data"]["management-url"]


def _replicas_back(docs: Docs) -> None:
    by_kind(docs, "Deployment")[0]["spec"]["replicas"] = 2


def _short_grace(docs: Docs) -> None:
    by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 5


def _probe_on_wrong_path(docs: Docs) -> None:
    container = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["path"] = "/ready"


def _http_on_loopback(docs: Docs) -> None:
    container = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "CREDITSTREAM_HTTP_HOST"]


def _drop_relay(docs: Docs) -> None:
    docs[:] = [d for d in docs if d not in component(docs, "Deployment", "relay")]


def _host_in_metadata(docs: Docs) -> None:
    metadata = by_kind(docs, "ScaledObject")[0]["spec"]["triggers"][0]["metadata"]
    metadata["host"] = "http://creditstream:s3cretpassword@broker:15672/"


NEGATIVE = [
    pytest.param(
        _wrong_trigger_queue,
        queue_name_problems,
        "watches queue 'creditstream.typo'",
        id="wrong-queue-on-trigger",
    ),
    pytest.param(
        _drop_secret_key,
        lambda d: secret_ref_problems(d),
        "has no key 'management-url'",
        id="missing-secret-key",
    ),
    pytest.param(_replicas_back, replicas_problems, "sets spec.replicas", id="replicas-under-keda"),
    pytest.param(
        _short_grace,
        grace_period_problems,
        "terminationGracePeriodSeconds 5",
        id="grace-below-batch",
    ),
    pytest.param(_probe_on_wrong_path, probe_problems, "path /ready != /readyz", id="probe-path"),
    pytest.param(
        _http_on_loopback, probe_problems, "the process binds 127.0.0.1", id="http-on-loopback"
    ),
    pytest.param(
        _host_in_metadata,
        plain_credential_problems,
        "credential in trigger metadata",
        id="password-in-trigger-metadata",
    ),
]


@pytest.mark.parametrize(("mutate", "check", "expected"), NEGATIVE)
def test_checks_catch_a_broken_manifest(
    rendered_docs: dict[str, Docs], mutate: Callable[[Docs], None], check: CheckFn, expected: str
) -> None:
    assert check(rendered_docs["defaults"]) == []
    problems = check(_post_render(rendered_docs["defaults"], mutate))
    print("\n".join(problems))
    assert any(expected in p for p in problems), problems


def test_relay_check_catches_consumers_at_zero_without_a_relay(
    rendered_docs: dict[str, Docs],
) -> None:
    """Review-outbox #2: PostgreSQL + scale to zero without a relay Deployment is caught."""
    assert outbox_relay_problems(rendered_docs["postgresql"]) == []
    problems = outbox_relay_problems(_post_render(rendered_docs["postgresql"], _drop_relay))
    assert any("no relay Deployment" in p for p in problems), problems


def test_credential_check_catches_a_password_in_extra_env(helm: Path) -> None:
    """A broken value: a URL with a password given as plain extraEnv is caught."""
    out = helm_template(
        helm,
        sets=(
            "consumer.extraEnv[0].name=EXTRA_BROKER",
            "consumer.extraEnv[0].value=amqp://app:hunter22@broker:5672/",
        ),
    )
    problems = plain_credential_problems(parse_docs(out.stdout))
    assert problems == ["Deployment cs-creditstream-consumer: credential in plain env EXTRA_BROKER"]


# --- plain manifests for kubectl users -----------------------------------------------------------
def test_rendered_manifests_match_the_chart(helm: Path, tmp_path: Path) -> None:
    """k8s/rendered/ is `make manifests` output; a hand edit or a stale render fails here."""
    render_manifests.render(helm, tmp_path)
    expected = {str(p.relative_to(tmp_path)): p.read_text() for p in tmp_path.rglob("*.yaml")}
    actual = {str(p.relative_to(RENDERED_DIR)): p.read_text() for p in RENDERED_DIR.rglob("*.yaml")}
    assert expected, "nothing rendered"
    stale = sorted(set(expected) ^ set(actual)) + sorted(
        name for name in expected.keys() & actual.keys() if expected[name] != actual[name]
    )
    assert stale == [], "k8s/rendered drifted from the chart: run `make manifests`"


def test_rendered_manifests_pass_the_contract_checks() -> None:
    docs = [d for p in sorted(RENDERED_DIR.rglob("*.yaml")) for d in parse_docs(p.read_text())]
    assert by_kind(docs, "ScaledObject")
    for check in (
        queue_name_problems,
        replicas_problems,
        plain_credential_problems,
        grace_period_problems,
        probe_problems,
        outbox_relay_problems,
    ):
        assert check(docs) == [], check.__name__
    assert secret_ref_problems(docs, {"creditstream-broker", "creditstream-database"}) == []


def test_kind_port_mappings_do_not_block_port_forwards(rendered_docs: dict[str, Docs]) -> None:
    """A kind hostPort is bound on the host: it must lead to a NodePort some Service uses, and
    never take a port that skaffold's portForward or the NOTES' port-forward want."""
    config = yaml.safe_load((REPO_ROOT / "k8s" / "kind-cluster.yaml").read_text())
    mappings = [m for node in config["nodes"] for m in node.get("extraPortMappings", [])]
    skaffold = yaml.safe_load((REPO_ROOT / "skaffold.yaml").read_text())
    forwarded = {int(p["localPort"]) for p in skaffold.get("portForward", [])}
    # NOTE: `helm template` leaves NOTES.txt out; its `.Values.x.y` ports are looked up here.
    values = effective_values(next(c for c in CASES if c.id == "kind"))

    def value(match: re.Match[str]) -> str:
        node: Any = values
        for key in match.group(1).split("."):
            node = node[key]
        return str(node)

    notes = re.sub(
        r"\{\{ \.Values\.([\w.]+) \}\}", value, (CHART / "templates" / "NOTES.txt").read_text()
    )
    forwarded |= {int(m) for m in re.findall(r"port-forward \S+ (\d+):", notes)}
    assert forwarded, "no port-forward found: the parsers are broken"
    node_ports = {
        int(port["nodePort"])
        for service in by_kind(rendered_docs["kind"], "Service")
        for port in service["spec"]["ports"]
        if "nodePort" in port
    }
    for mapping in mappings:
        assert int(mapping["hostPort"]) not in forwarded, mapping
        assert int(mapping["containerPort"]) in node_ports, f"{mapping}: no Service uses it"


WATERMARKS = [
    pytest.param("1Gi", 0.6, 644245094, id="1Gi-x0.6"),
    pytest.param("512Mi", 0.6, 322122547, id="512Mi-x0.6"),
    pytest.param("4Gi", 0.4, 1717986918, id="4Gi-x0.4"),
    pytest.param("2G", 0.5, 1000000000, id="2G-x0.5"),
    pytest.param("1500M", 0.6, 900000000, id="1500M-x0.6"),
    pytest.param("1073741824", 0.6, 644245094, id="bytes-x0.6"),
]


@pytest.mark.parametrize(("limit", "fraction", "expected"), WATERMARKS)
def test_broker_memory_watermark_is_absolute_from_the_container_limit(
    helm: Path, limit: str, fraction: float, expected: int
) -> None:
    """RabbitMQ in a container should get an absolute watermark: the VM sees the host's memory,
    not the cgroup limit, so a relative one can exceed the limit and the pod is OOM-killed."""
    docs = parse_docs(
        helm_template(
            helm,
            sets=(f"rabbitmq.resources.limits.memory={limit}",),
            # NOTE: --set keeps a float as a string; --set-json passes a number.
            extra=("--set-json", f"rabbitmq.memoryHighWatermark={fraction}"),
        ).stdout
    )
    config = next(
        c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-config")
    )
    lines = dict(
        line.split(" = ", 1)
        for line in config["data"]["rabbitmq.conf"].splitlines()
        if " = " in line and not line.startswith("#")
    )
    assert "vm_memory_high_watermark.relative" not in lines
    assert lines["vm_memory_high_watermark.absolute"] == str(expected)


def test_broker_without_a_memory_limit_is_refused(helm: Path) -> None:
    result = helm_template(helm, sets=("rabbitmq.resources.limits=null",), check=False)
    assert result.returncode != 0
    assert "rabbitmq.resources.limits.memory" in result.stderr, result.stderr


def test_hpa_behavior_tolerance_reaches_a_valid_scaledobject(helm: Path) -> None:
    """The per-direction `tolerance` (a Quantity) is accepted and valid for KEDA's CRD."""
    _require_keda_schemas()
    docs = parse_docs(
        helm_template(
            helm,
            sets=(
                "autoscaling.behavior.scaleUp.tolerance=0.05",
                "autoscaling.behavior.scaleDown.tolerance=100m",
            ),
        ).stdout
    )
    (scaled,) = by_kind(docs, "ScaledObject")
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert (behavior["scaleUp"]["tolerance"], behavior["scaleDown"]["tolerance"]) == (
        "0.05",
        "100m",
    )
    assert _keda_errors(scaled) == []


def test_a_float_tolerance_is_refused_before_kubernetes_refuses_it(helm: Path) -> None:
    """KEDA's CRD takes an integer or a Quantity string; a YAML float would fail at apply time."""
    result = helm_template(
        helm, extra=("--set-json", "autoscaling.behavior.scaleUp.tolerance=0.05"), check=False
    )
    assert result.returncode != 0
    assert "tolerance" in result.stderr, result.stderr
