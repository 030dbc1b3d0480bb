"""`rabbitmq.replicas`: one node, or a cluster that would form (peer discovery, one cookie,
RBAC for the broker only, a PDB that keeps a quorum, nodes spread apart).

The schema, kubeconform-style and checkov checks of test_manifests.py run on the
`broker-cluster` and `production` cases (3 nodes) as on every other case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chart_checks import by_kind

from conftest import CHART, NAMESPACE, RELEASE, REPO_ROOT, helm_template, parse_docs

pytestmark = pytest.mark.chart

Docs = list[dict[str, Any]]
BROKER = f"{RELEASE}-creditstream-rabbitmq"


def _broker(docs: Docs) -> dict[str, Any]:
    (statefulset,) = [s for s in by_kind(docs, "StatefulSet") if s["metadata"]["name"] == BROKER]
    return statefulset


def _config(docs: Docs) -> dict[str, str]:
    config = next(
        c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"] == f"{BROKER}-config"
    )
    return dict(config["data"])


def _conf_lines(docs: Docs) -> dict[str, str]:
    return dict(
        line.strip().split(" = ", 1)
        for line in _config(docs)["rabbitmq.conf"].splitlines()
        if " = " in line and not line.strip().startswith("#")
    )


def _pods(docs: Docs) -> dict[str, dict[str, Any]]:
    """{kind/name: pod spec} of every pod-carrying object."""
    pods = {}
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] == "Pod":
            pods[f"Pod/{doc['metadata']['name']}"] = spec
        elif doc["kind"] in {"StatefulSet", "Deployment", "Job"}:
            pods[f"{doc['kind']}/{doc['metadata']['name']}"] = spec["template"]["spec"]
    return pods


@pytest.mark.parametrize("case", ["broker-cluster", "production"])
def test_three_replicas_render_a_cluster_that_would_form(
    rendered_docs: dict[str, Docs], case: str
) -> None:
    docs = rendered_docs[case]
    broker = _broker(docs)
    spec, pod = broker["spec"], broker["spec"]["template"]["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    # peer discovery: plugin on, k8s backend pointed at the headless Service, long node names
    assert "rabbitmq_peer_discovery_k8s" in _config(docs)["enabled_plugins"]
    conf = _conf_lines(docs)
    headless = spec["serviceName"]
    assert conf["cluster_formation.peer_discovery_backend"] == "rabbit_peer_discovery_k8s"
    assert conf["cluster_formation.k8s.service_name"] == headless
    domain = f"{headless}.{NAMESPACE}.svc.cluster.local"
    assert conf["cluster_formation.k8s.hostname_suffix"] == f".{domain}"
    assert conf["cluster_formation.k8s.address_type"] == "hostname"
    assert conf["cluster_partition_handling"] == "pause_minority"
    assert conf["quorum_queue.continuous_membership_reconciliation.enabled"] == "true"
    assert conf["quorum_queue.continuous_membership_reconciliation.target_group_size"] == "3"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["RABBITMQ_USE_LONGNAME"]["value"] == "true"
    assert env["RABBITMQ_NODENAME"]["value"] == f"rabbit@$(MY_POD_NAME).{domain}"
    (headless_service,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == headless]
    assert headless_service["spec"]["clusterIP"] == "None"
    assert headless_service["spec"]["publishNotReadyAddresses"] is True
    # one cookie for all: every node copies it from the same Secret before RabbitMQ starts
    (init,) = pod["initContainers"]
    cookie_volume = next(v for v in pod["volumes"] if v["name"] == "erlang-cookie")
    assert "/var/lib/rabbitmq/.erlang.cookie" in init["command"][-1]
    assert {m["name"] for m in init["volumeMounts"]} == {"erlang-cookie", "data"}
    # RBAC: get endpoints, bound to the broker's own account, the only pod with a token
    (role,) = by_kind(docs, "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get"]}]
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}
    ]
    tokens = {name: p.get("automountServiceAccountToken") for name, p in _pods(docs).items()}
    assert tokens.pop(f"StatefulSet/{BROKER}") is True
    assert set(tokens.values()) == {False}, tokens
    others = {
        p.get("serviceAccountName") for name, p in _pods(docs).items() if "rabbitmq" not in name
    }
    assert pod["serviceAccountName"] not in others
    # a quorum survives a drain: at most 1 of 3 away; nodes kept apart
    pdb = next(p for p in by_kind(docs, "PodDisruptionBudget") if p["metadata"]["name"] == BROKER)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    anti = pod["affinity"]["podAntiAffinity"]
    terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution") or [
        t["podAffinityTerm"] for t in anti["preferredDuringSchedulingIgnoredDuringExecution"]
    ]
    assert terms[0]["topologyKey"] == "kubernetes.io/hostname"
    assert terms[0]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["maxSkew"] == 1
    # quorum queues get three members; the nodes talk Erlang distribution to each other
    if case == "broker-cluster":
        settings = next(
            c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-settings")
        )
        assert settings["data"]["CREDITSTREAM_QUORUM_INITIAL_GROUP_SIZE"] == "3"
    policy = next(n for n in by_kind(docs, "NetworkPolicy") if n["metadata"]["name"] == BROKER)
    ingress_ports = [{p["port"] for p in rule["ports"]} for rule in policy["spec"]["ingress"]]
    assert {"epmd", "dist"} in ingress_ports
    assert cookie_volume["secret"]["secretName"]


def test_generated_cookie_secret_is_kept_and_looked_up(rendered_docs: dict[str, Docs]) -> None:
    docs = rendered_docs["broker-cluster"]
    secret = next(
        s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == f"{BROKER}-erlang-cookie"
    )
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(secret["data"]["erlang-cookie"]) >= 48
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = helpers.split('define "creditstream.rabbitmq.erlangCookie"', 1)[1].split("end -}}\n\n")[
        0
    ]
    # NOTE: `helm template` has no cluster to look up; the template must reuse what exists
    assert 'lookup "v1" "Secret"' in block and "randAlphaNum" in block


def test_pre_created_secrets_carry_the_cookie(rendered_docs: dict[str, Docs]) -> None:
    for case in ("production",):
        docs = rendered_docs[case]
        volume = next(
            v
            for v in _broker(docs)["spec"]["template"]["spec"]["volumes"]
            if v["name"] == "erlang-cookie"
        )
        assert volume["secret"]["secretName"] == "creditstream-broker"
        assert volume["secret"]["items"] == [{"key": "erlang-cookie", "path": "erlang-cookie"}]
        assert not [s for s in by_kind(docs, "Secret") if "cookie" in s["metadata"]["name"]]
    for doc in ("docs/kubernetes.md", "charts/creditstream/README.md"):
        assert "--from-literal=erlang-cookie=" in (REPO_ROOT / doc).read_text(), doc


@pytest.mark.parametrize("case", ["defaults", "kind"])
def test_one_replica_is_a_single_node_without_rbac_or_token(
    rendered_docs: dict[str, Docs], case: str
) -> None:
    docs = rendered_docs[case]
    pod = _broker(docs)["spec"]["template"]["spec"]
    assert _broker(docs)["spec"]["replicas"] == 1
    assert pod["automountServiceAccountToken"] is False
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    assert "rabbitmq_peer_discovery_k8s" not in _config(docs)["enabled_plugins"]
    assert "cluster_formation.peer_discovery_backend" not in _conf_lines(docs)
    assert all(p["metadata"]["name"] != BROKER for p in by_kind(docs, "PodDisruptionBudget"))
    # NOTE: what an existing single-node install has: immutable policy, node name (its data
    # directory is keyed by it), no shared cookie to require
    assert _broker(docs)["spec"]["podManagementPolicy"] == "OrderedReady"
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert not {"RABBITMQ_NODENAME", "RABBITMQ_USE_LONGNAME"} & env
    assert "initContainers" not in pod
    assert all(v["name"] != "erlang-cookie" for v in pod["volumes"])
    assert not [s for s in by_kind(docs, "Secret") if "cookie" in s["metadata"]["name"]]


@pytest.mark.parametrize(
    ("sets", "says"),
    [
        pytest.param(("rabbitmq.replicas=2",), "rabbitmq.replicas=2", id="even"),
        pytest.param(
            ("rabbitmq.replicas=3", "rabbitmq.quorumInitialGroupSize=5"),
            "quorumInitialGroupSize=5",
            id="group-bigger-than-cluster",
        ),
        pytest.param(("rabbitmq.podAntiAffinity=sometimes",), "podAntiAffinity", id="enum"),
        pytest.param(
            ("rabbitmq.replicas=3", "rabbitmq.persistence.enabled=false"),
            "rabbitmq.persistence.enabled=true",
            id="cluster-on-emptydir",
        ),
        pytest.param(
            ("rabbitmq.replicas=5", "rabbitmq.quorumInitialGroupSize=4"),
            "quorumInitialGroupSize=4",
            id="even-group",
        ),
        pytest.param(
            ("rabbitmq.replicas=3", "rabbitmq.quorumInitialGroupSize=1"),
            "quorumInitialGroupSize=1",
            id="unreplicated-group",
        ),
    ],
)
def test_cluster_values_that_cannot_work_are_refused(
    helm: Path, sets: tuple[str, ...], says: str
) -> None:
    result = helm_template(helm, sets=sets, check=False)
    assert result.returncode != 0
    assert says in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("sets", "away"),
    [
        pytest.param(("rabbitmq.replicas=5",), 1, id="5-nodes-default-3-members"),
        pytest.param(
            ("rabbitmq.replicas=5", "rabbitmq.quorumInitialGroupSize=5"), 2, id="5-nodes-5-members"
        ),
        pytest.param(
            ("rabbitmq.replicas=5", "rabbitmq.quorumInitialGroupSize=3"), 1, id="5-nodes-3-members"
        ),
    ],
)
def test_pdb_keeps_a_majority_of_every_queues_members(
    helm: Path, sets: tuple[str, ...], away: int
) -> None:
    docs = parse_docs(helm_template(helm, sets=sets).stdout)
    pdb = next(p for p in by_kind(docs, "PodDisruptionBudget") if p["metadata"]["name"] == BROKER)
    assert pdb["spec"]["maxUnavailable"] == away


def test_values_examples_name_their_replicas() -> None:
    import yaml

    values = REPO_ROOT / "k8s" / "values"
    assert yaml.safe_load((values / "production.yaml").read_text())["rabbitmq"]["replicas"] == 3
    assert yaml.safe_load((values / "kind.yaml").read_text())["rabbitmq"]["replicas"] == 1
