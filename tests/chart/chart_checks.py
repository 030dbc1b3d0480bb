"""Pure checks over rendered Kubernetes objects; each returns a list of problems (empty = fine).

They read only the manifests, so they apply equally to `helm template` output, to the committed
`k8s/rendered/` files and to a post-rendered (patched) install.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

Doc = dict[str, Any]

POD_KINDS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet", "Pod", "CronJob"}
SETTINGS_QUEUE_ENV = "CREDITSTREAM_REQUESTS_QUEUE"
DEFAULT_REQUESTS_QUEUE = "creditstream.requests"  # Settings.requests_queue default
WORST_BATCH_ANNOTATION = "creditstream.io/worst-batch-seconds"
RELAY_FLUSH_SECONDS = 5.0  # OutboxRelay.stop(timeout_s) default
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)


def by_kind(docs: Iterable[Doc], kind: str) -> list[Doc]:
    """All objects of one kind."""
    return [d for d in docs if d.get("kind") == kind]


def component(docs: Iterable[Doc], kind: str, name: str) -> list[Doc]:
    """Objects of one kind labelled app.kubernetes.io/component=name (e.g. consumer, relay)."""
    return [
        d
        for d in by_kind(docs, kind)
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == name
    ]


def find(docs: Iterable[Doc], kind: str, name: str) -> Doc | None:
    """The object of this kind and name, if rendered."""
    return next((d for d in by_kind(docs, kind) if d["metadata"]["name"] == name), None)


def pod_spec(doc: Doc) -> Doc | None:
    """The pod spec inside any workload kind."""
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("spec")
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in POD_KINDS:
        return doc["spec"]["template"]["spec"]
    return None


def containers(doc: Doc, *, init: bool = True) -> Iterator[Doc]:
    """Every container (and init container) of a workload."""
    spec = pod_spec(doc) or {}
    yield from spec.get("containers", [])
    if init:
        yield from spec.get("initContainers", [])


def secret_data(docs: Iterable[Doc]) -> dict[str, dict[str, str]]:
    """Decoded data of every rendered Secret: {secret name: {key: value}}."""
    out: dict[str, dict[str, str]] = {}
    for secret in by_kind(docs, "Secret"):
        values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        values.update(secret.get("stringData") or {})
        out[secret["metadata"]["name"]] = values
    return out


# A downward-API value (fieldRef) in resolve_env's result: FIELD_REF + the field path.
FIELD_REF = "fieldRef:"
POD_IP = FIELD_REF + "status.podIP"
# `$$` or `$(NAME)`: the kubelet's expansion of env values (dependent environment variables).
_DEPENDENT_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
# Addresses the kubelet's probes (sent to the pod IP) can reach.
_PROBE_REACHABLE_HOSTS = {POD_IP, "0.0.0.0", "::", ""}


def expand_env_value(value: str, env: Mapping[str, object]) -> str:
    """An env value as the kubelet expands it: $(NAME) of a variable defined before it (else
    left as written), `$$` for a literal `$`."""

    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return str(env[name]) if name in env else match.group(0)

    return _DEPENDENT_VAR.sub(expand, value)


def resolve_env(docs: list[Doc], container: Doc) -> dict[str, str | tuple[str, str]]:
    """Effective env of a container: literal values as str, secretKeyRefs as (secret, key).

    envFrom ConfigMaps come first and explicit env entries override them, as in the kubelet.
    """
    env: dict[str, str | tuple[str, str]] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cm = find(docs, "ConfigMap", source["configMapRef"]["name"])
            env.update((cm or {}).get("data") or {})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand_env_value(str(item["value"]), env)
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = (ref["name"], ref["key"])
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = FIELD_REF + item["valueFrom"]["fieldRef"]["fieldPath"]
    return env


def scaled_deployments(docs: list[Doc]) -> list[tuple[Doc, Doc | None]]:
    """(ScaledObject, the Deployment it targets or None)."""
    pairs: list[tuple[Doc, Doc | None]] = []
    for so in by_kind(docs, "ScaledObject"):
        target = so["spec"]["scaleTargetRef"]
        if target.get("kind", "Deployment") != "Deployment":
            pairs.append((so, None))
            continue
        pairs.append((so, find(docs, "Deployment", target["name"])))
    return pairs


def queue_read(container: Doc, env: Mapping[str, Any]) -> str:
    """The queue the container's process reads, as the process itself derives it.

    `consume` reads CREDITSTREAM_REQUESTS_QUEUE; `stage S [--shadow]` reads the stage queue
    that creditstream.stages.topology names from CREDITSTREAM_STAGE_PREFIX (issue 11).
    """
    args = [*container.get("command", []), *container.get("args", [])]
    if "stage" in args:
        from creditstream.settings import Settings
        from creditstream.stages.topology import stage_queue

        stage = args[args.index("stage") + 1]
        prefix = env.get("CREDITSTREAM_STAGE_PREFIX")
        settings = Settings(**({"stage_prefix": prefix} if isinstance(prefix, str) else {}))
        return stage_queue(settings, stage, shadow="--shadow" in args)
    return str(env.get(SETTINGS_QUEUE_ENV, DEFAULT_REQUESTS_QUEUE))


def queue_name_problems(docs: list[Doc]) -> list[str]:
    """The KEDA trigger must watch the queue the scaled consumers read."""
    problems = []
    for so, deployment in scaled_deployments(docs):
        name = so["metadata"]["name"]
        if deployment is None:
            problems.append(f"ScaledObject {name}: scaleTargetRef names no rendered Deployment")
            continue
        for trigger in so["spec"]["triggers"]:
            if trigger["type"] != "rabbitmq":
                continue
            watched = trigger["metadata"].get("queueName")
            for container in containers(deployment, init=False):
                read = queue_read(container, resolve_env(docs, container))
                if watched != read:
                    problems.append(
                        f"ScaledObject {name} watches queue {watched!r} but container "
                        f"{container['name']} of Deployment {deployment['metadata']['name']} "
                        f"reads {read!r}"
                    )
    return problems


def replicas_problems(docs: list[Doc]) -> list[str]:
    """A Deployment driven by KEDA's HPA must not set spec.replicas; a fixed one must."""
    problems = []
    scaled = {d["metadata"]["name"] for _, d in scaled_deployments(docs) if d is not None}
    for deployment in by_kind(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        has_replicas = "replicas" in deployment["spec"]
        if name in scaled and has_replicas:
            problems.append(
                f"Deployment {name} sets spec.replicas although a ScaledObject drives it"
            )
        if name not in scaled and not has_replicas:
            problems.append(f"Deployment {name} has neither spec.replicas nor a ScaledObject")
    return problems


def plain_credential_problems(docs: list[Doc]) -> list[str]:
    """No secret value and no URL with a password in args, command, plain env or metadata."""
    secrets = [v for data in secret_data(docs).values() for v in data.values() if len(v) >= 8]

    def leaks(text: str) -> bool:
        return bool(URL_WITH_PASSWORD.search(text)) or any(s in text for s in secrets)

    problems = []
    for doc in docs:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        for container in containers(doc):
            for field in ("command", "args"):
                for arg in container.get(field) or []:
                    if leaks(str(arg)):
                        problems.append(f"{where}: credential in {container['name']}.{field}")
            for item in container.get("env", []):
                if "value" in item and leaks(str(item["value"])):
                    problems.append(f"{where}: credential in plain env {item['name']}")
        if doc["kind"] == "ConfigMap":
            for key, value in (doc.get("data") or {}).items():
                if leaks(str(value)):
                    problems.append(f"{where}: credential in ConfigMap key {key}")
        if doc["kind"] == "ScaledObject":
            for trigger in doc["spec"]["triggers"]:
                for key, value in trigger.get("metadata", {}).items():
                    if leaks(str(value)):
                        problems.append(f"{where}: credential in trigger metadata {key}")
    return problems


def secret_ref_problems(docs: list[Doc], external_secrets: Iterable[str] = ()) -> list[str]:
    """Every secretKeyRef / secretTargetRef names a rendered Secret that holds that key.

    Secrets the user creates beforehand (`existingSecret` values) are listed in external_secrets.
    """
    rendered = secret_data(docs)
    external = set(external_secrets)
    refs: list[tuple[str, str, str]] = []
    for doc in docs:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        for container in containers(doc):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append((f"{where} env {item['name']}", ref["name"], ref["key"]))
        if doc["kind"] == "TriggerAuthentication":
            for ref in doc["spec"].get("secretTargetRef", []):
                refs.append((f"{where} parameter {ref['parameter']}", ref["name"], ref["key"]))
    problems = []
    for where, name, key in refs:
        if name in external:
            continue
        if name not in rendered:
            problems.append(f"{where}: Secret {name} is neither rendered nor an existingSecret")
        elif key not in rendered[name]:
            problems.append(f"{where}: Secret {name} has no key {key!r}")
    return problems


def trigger_auth_problems(docs: list[Doc]) -> list[str]:
    """KEDA reads the broker from the same Secret key the consumers use for that protocol."""
    problems = []
    for so, deployment in scaled_deployments(docs):
        for trigger in so["spec"]["triggers"]:
            if "host" in trigger.get("metadata", {}):
                problems.append(f"ScaledObject {so['metadata']['name']}: host in plain metadata")
            auth_name = trigger.get("authenticationRef", {}).get("name")
            auth = find(docs, "TriggerAuthentication", auth_name) if auth_name else None
            if auth is None:
                problems.append(
                    f"ScaledObject {so['metadata']['name']}: TriggerAuthentication "
                    f"{auth_name!r} not rendered"
                )
                continue
            host = [r for r in auth["spec"].get("secretTargetRef", []) if r["parameter"] == "host"]
            env_name = (
                "CREDITSTREAM_MANAGEMENT_URL"
                if trigger["metadata"].get("protocol") == "http"
                else "CREDITSTREAM_AMQP_URL"
            )
            for container in containers(deployment or {}, init=False):
                used = resolve_env(docs, container).get(env_name)
                if not host or (host[0]["name"], host[0]["key"]) != used:
                    problems.append(
                        f"TriggerAuthentication {auth_name}: host {host} differs from "
                        f"the consumer's {env_name} {used}"
                    )
    return problems


def grace_period_problems(docs: list[Doc]) -> list[str]:
    """terminationGracePeriodSeconds must exceed the worst batch time plus the batch timeout."""
    problems = []
    for deployment in component(docs, "Deployment", "relay"):
        grace = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)  # type: ignore[union-attr]
        if grace <= RELAY_FLUSH_SECONDS:
            problems.append(
                f"Deployment {deployment['metadata']['name']}: terminationGracePeriodSeconds "
                f"{grace} <= the relay's {RELAY_FLUSH_SECONDS} s flush on stop"
            )
    for deployment in component(docs, "Deployment", "consumer"):
        name = deployment["metadata"]["name"]
        worst = deployment["metadata"].get("annotations", {}).get(WORST_BATCH_ANNOTATION)
        if worst is None:
            problems.append(f"Deployment {name}: no {WORST_BATCH_ANNOTATION} annotation")
            continue
        grace = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)  # type: ignore[union-attr]
        for container in containers(deployment, init=False):
            timeout_ms = resolve_env(docs, container).get("CREDITSTREAM_BATCH_TIMEOUT_MS", "20")
            bound = float(worst) + float(str(timeout_ms)) / 1000
            if grace <= bound:
                problems.append(
                    f"Deployment {name}: terminationGracePeriodSeconds {grace} <= "
                    f"worst batch {worst} s + batch timeout {timeout_ms} ms"
                )
    return problems


def probe_problems(docs: list[Doc]) -> list[str]:
    """Consumer probes hit /readyz and /healthz on the port CREDITSTREAM_HTTP_PORT serves."""
    problems = []
    for deployment in by_kind(docs, "Deployment"):
        for container in containers(deployment, init=False):
            where = f"Deployment {deployment['metadata']['name']} container {container['name']}"
            env = resolve_env(docs, container)
            port = int(str(env.get("CREDITSTREAM_HTTP_PORT", "8000")))
            # NOTE: the process binds loopback unless told otherwise; probes go to the pod IP.
            hosts = str(env.get("CREDITSTREAM_HTTP_HOST", "127.0.0.1"))
            if not _PROBE_REACHABLE_HOSTS & {host.strip() for host in hosts.split(",")}:
                problems.append(
                    f"{where}: the process binds {hosts} (CREDITSTREAM_HTTP_HOST) but the "
                    "kubelet probes the pod IP: set it from the downward API status.podIP"
                )
            named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = (container.get(probe) or {}).get("httpGet")
                if not get:
                    problems.append(f"{where}: {probe} is not an httpGet probe")
                    continue
                target = named.get(get["port"], get["port"])
                if get.get("host"):
                    problems.append(f"{where}: {probe} sets host {get['host']} (not the pod IP)")
                if get.get("path") != path:
                    problems.append(f"{where}: {probe} path {get.get('path')} != {path}")
                if target != port:
                    problems.append(
                        f"{where}: {probe} port {get['port']} -> {target} but the "
                        f"process serves {port}"
                    )
    return problems


def outbox_relay_problems(docs: list[Doc]) -> list[str]:
    """Consumers that KEDA may scale to zero need a relay Deployment beside them (review-outbox
    #2): otherwise committed events wait in the outbox for the next request. Exempt: the
    per-pod SQLite store (a `results` emptyDir), whose outbox no other pod can read."""
    problems = []
    for scaled, deployment in scaled_deployments(docs):
        if deployment is None or scaled["spec"].get("minReplicaCount", 0) != 0:
            continue
        volumes = {v["name"]: v for v in (pod_spec(deployment) or {}).get("volumes", [])}
        if "emptyDir" in volumes.get("results", {}):
            continue
        relays = [
            d
            for d in component(docs, "Deployment", "relay")
            if d["spec"].get("replicas", 1) >= 1
            and any(c.get("args") == ["relay"] for c in containers(d, init=False))
        ]
        if not relays:
            problems.append(
                f"Deployment {deployment['metadata']['name']} scales to zero but no relay "
                "Deployment (`creditstream relay`, replicas >= 1) publishes the outbox meanwhile"
            )
    return problems
