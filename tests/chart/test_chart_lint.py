"""`helm lint --strict` on Helm 3 and Helm 4, values validation and its fix-it messages."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import CASE_PARAMS, CHART, ValuesCase, helm_template, parse_docs

pytestmark = [pytest.mark.chart, pytest.mark.timeout(300)]


@pytest.mark.parametrize("major", [pytest.param("3", id="helm3"), pytest.param("4", id="helm4")])
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_helm_lint_strict(helm_binaries: dict[str, Path], major: str, case: ValuesCase) -> None:
    cmd = [str(helm_binaries[major]), "lint", "--strict", str(CHART)]
    for f in case.files:
        cmd += ["-f", str(f)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_helm3_and_helm4_render_the_same_objects(
    helm_binaries: dict[str, Path], case: ValuesCase
) -> None:
    def kinds_and_names(major: str) -> list[tuple[str, str]]:
        out = helm_template(helm_binaries[major], case.files).stdout
        return sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out) if d)

    assert kinds_and_names("3") == kinds_and_names("4")


REJECTED = [
    pytest.param(
        ("rabbitmq.enabled=false",),
        "set externalBroker.existingSecret",
        id="external-broker-without-secret",
    ),
    pytest.param(
        ("consumer.terminationGracePeriodSeconds=10",),
        "must exceed the worst batch time",
        id="grace-period-below-batch-time",
    ),
    pytest.param(
        (
            "consumer.extraEnv[0].name=CREDITSTREAM_REQUESTS_QUEUE",
            "consumer.extraEnv[0].value=other",
        ),
        "consumer.queueName feeds both the consumer and the KEDA trigger",
        id="queue-name-overridden-behind-keda",
    ),
    pytest.param(("autoscaling.minReplicaCount=9",), "exceeds maxReplicaCount", id="min-above-max"),
    pytest.param(("rabbitmq.auth.username=guest",), "choose another user name", id="guest-user"),
    pytest.param(
        ("rabbitmq.image.tag=4.1.4",), "use a -management tag", id="broker-without-management"
    ),
    pytest.param(
        (f"rabbitmq.image.tag=4.1.4@sha256:{'0' * 64}",),
        "use a -management tag",
        id="digest-pinned-broker-without-management",
    ),
    pytest.param(
        ("rabbitmq.image.tag=4.1.4-management@sha256:abc",), "tag", id="schema-short-digest"
    ),
    pytest.param(
        ("autoscaling.behavior.scaleDown.stabilisationWindowSeconds=60",),
        "stabilisationWindowSeconds",
        id="schema-behavior-typo",
    ),
    pytest.param(
        ("autoscaling.behavior.scaleUp.policies[0].type=Percentage",),
        "type",
        id="schema-behavior-policy-type",
    ),
    pytest.param(
        ("autoscaling.behavior.scaleUp.selectPolicy=Maximum",),
        "selectPolicy",
        id="schema-behavior-select-policy",
    ),
    pytest.param(
        ("autoscaling.behavior.scaleDown.policies[0].periodSeconds=3601",),
        "periodSeconds",
        id="schema-behavior-period-too-long",
    ),
    pytest.param(
        ("autoscaling.behavior.scaleDown.stabilizationWindowSeconds=-1",),
        "stabilizationWindowSeconds",
        id="schema-behavior-negative-window",
    ),
    pytest.param(("producer.source=pvc",), "needs producer.pvc.claimName", id="pvc-without-claim"),
    pytest.param(("autoscaling.protocol=https",), "protocol", id="schema-protocol-enum"),
    pytest.param(
        ("autoscaling.protocol=amqp",),
        "MessageRate reads the management API",
        id="message-rate-over-amqp",
    ),
    pytest.param(("autoscaling.messageRate=0",), "messageRate", id="schema-message-rate-positive"),
    pytest.param(
        ("autoscaling.activationMessageRate=-1",),
        "activationMessageRate",
        id="schema-activation-message-rate",
    ),
    pytest.param(("consumer.queueName=",), "queueName", id="schema-empty-queue-name"),
    pytest.param(("rabbitmq.auth.secretKeys.amqpUrl=",), "amqpUrl", id="schema-empty-secret-key"),
    pytest.param(("consumer.unknownKnob=1",), "unknownKnob", id="schema-unknown-key"),
    pytest.param(("pipeline.mode=chained",), "fused", id="schema-pipeline-mode"),
    pytest.param(
        ("pipeline.shadow.enabled=true",),
        "pipeline.shadow.enabled=true needs pipeline.mode=staged",
        id="shadow-without-stages",
    ),
    pytest.param(
        ("pipeline.mode=staged", "producer.source=url"),
        "staged pipeline's raw entry reads CSV rows",
        id="staged-from-the-xls-archive",
    ),
    pytest.param(
        ("consumer.prefetch=1024", "consumer.maxBodyBytes=1048576"),
        "consumer.prefetch x consumer.maxBodyBytes",
        id="deliveries-in-hand-over-the-memory-limit",
    ),
    pytest.param(
        ("consumer.resources.limits.memory=128Mi",),
        "consumer.prefetch x consumer.maxBodyBytes",
        id="memory-limit-too-small-for-the-prefetch",
    ),
    pytest.param(
        ("resultsStream.segmentBytes=2000000000",),
        "must be below resultsStream.maxBytes",
        id="results-stream-segment-above-retention",
    ),
    pytest.param(("resultsStream.maxAge=7days",), "maxAge", id="schema-results-stream-max-age"),
]


@pytest.mark.parametrize("major", [pytest.param("3", id="helm3"), pytest.param("4", id="helm4")])
@pytest.mark.parametrize(("sets", "message"), REJECTED)
def test_invalid_values_fail_with_a_fix_it_message(
    helm_binaries: dict[str, Path], major: str, sets: tuple[str, ...], message: str
) -> None:
    result = helm_template(helm_binaries[major], sets=sets, check=False)
    assert result.returncode != 0, f"helm accepted {sets}"
    assert message in result.stderr, result.stderr


def test_values_contract_shared_with_the_local_autoscaler() -> None:
    """Keys the issue-4 autoscaler reads from values.yaml (its one source of truth)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    autoscaling = values["autoscaling"]
    expected_keys = {
        "enabled",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "initialCooldownPeriod",
        "queueLength",
        "activationQueueLength",
        "messageRate",
        "activationMessageRate",
        "protocol",
        "behavior",
    }
    assert expected_keys <= set(autoscaling)
    assert autoscaling["protocol"] == "http"
    assert autoscaling["minReplicaCount"] == 0
    assert autoscaling["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 60
    assert values["consumer"]["queueName"] == "creditstream.requests"


def test_every_value_is_documented() -> None:
    """Every leaf of values.yaml has a `# --` comment block above it or above an ancestor map."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing maps
    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        block = []
        for j in range(i - 1, -1, -1):
            if not lines[j].strip().startswith("#"):
                break
            block.append(lines[j].strip())
        documented = any(c.startswith("# --") for c in block) or any(d for _, d in stack)
        if stripped.endswith(":"):  # a map: documented itself or through its leaves
            stack.append((indent, documented))
        elif not documented:
            undocumented.append(f"line {i + 1}: {stripped}")
    assert undocumented == []


def test_chart_readme_explains_every_checkov_skip(rendered: dict[str, str]) -> None:
    readme = (CHART / "README.md").read_text()
    skipped = {
        line.split(":", 2)[1].strip().strip('"').split("=")[0]
        for text in rendered.values()
        for line in text.splitlines()
        if line.strip().startswith("checkov.io/skip")
    }
    assert skipped, "no checkov skips found: the parser is broken"
    missing = sorted(s for s in skipped if s not in readme)
    assert missing == []


# NOTE: the grammar of an image reference with a digest (distribution/reference).
DIGEST_REF = re.compile(r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*:[\w][\w.-]{0,127}@sha256:[0-9a-f]{64}$")


def readme_digest_example() -> str:
    """The YAML block of the chart README that pins images by digest."""
    readme = (CHART / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
    (block,) = [b for b in blocks if "@sha256:" in b]
    return block


@pytest.mark.parametrize("major", [pytest.param("3", id="helm3"), pytest.param("4", id="helm4")])
def test_the_readme_digest_pin_example_renders(
    helm_binaries: dict[str, Path], major: str, tmp_path: Path
) -> None:
    """The README's own `tag@sha256:…` example, digests filled in, passes validation."""
    digest = hashlib.sha256(b"an image manifest").hexdigest()
    values = re.sub(r"<digest of [^>]+>", digest, readme_digest_example())
    values_file = tmp_path / "digests.yaml"
    values_file.write_text(values)
    result = helm_template(helm_binaries[major], (values_file,), check=False)
    assert result.returncode == 0, result.stderr
    images = {
        c["image"]
        for d in parse_docs(result.stdout)
        if d["kind"] in {"Deployment", "StatefulSet", "Job", "Pod"}
        for c in (d["spec"] if d["kind"] == "Pod" else d["spec"]["template"]["spec"])["containers"]
    }
    expected = {
        f"{name}@sha256:{digest}"
        for name in (
            "rabbitmq:4.1.4-management",
            "creditstream-consumer:0.1.0",
            "creditstream-producer:0.1.0",
        )
    }
    assert images == expected
    assert all(DIGEST_REF.match(image) for image in images), images
