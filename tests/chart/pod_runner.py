"""Run a rendered pod's container with podman or docker as the kubelet would, on host networking.

`run_args` turns a rendered pod spec + container into `<engine> run` arguments: image, command
and args, env (ConfigMap envFrom, literal values, Secret keys, downward API), user and groups,
read-only root, dropped capabilities, no privilege escalation, seccomp, CPU/memory limits,
volumes (emptyDir -> tmpfs of its sizeLimit, PVC -> a host folder the caller names), the grace
period as the stop timeout, and the rendered Services' DNS names mapped to 127.0.0.1 (the real
broker and PostgreSQL run on this machine).

Every field of the spec must be either reproduced or listed in NOT_REPRODUCED with the reason:
a field the chart starts rendering and this runner does not know fails the tests, instead of
being silently dropped.

NOTE: `podman kube play` (podman 4.3) was tried first. It runs the rendered Deployment once the
Secrets exist as podman secrets holding JSON `{key: base64}` (a `kind: Secret` in the played
YAML is stored as YAML and then refused as "not valid JSON"), but it ignores
terminationGracePeriodSeconds (stop timeout stays 10 s) and fsGroup, turns each emptyDir into a
named volume shared by every pod using the same name, refuses containerPorts on host
networking, and plays no Job. Hence this explicit translation, which docker runs as well.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chart_checks import by_kind, expand_env_value, find, secret_data

Doc = dict[str, Any]

# NOTE: fields with no local meaning; the reason is part of the contract of this runner.
NOT_REPRODUCED = {
    "pod": {
        "serviceAccountName": "no Kubernetes API here",
        "automountServiceAccountToken": "no Kubernetes API here",
        "imagePullSecrets": "images are local",
        "restartPolicy": "the test decides what runs again",
        "nodeSelector": "one node",
        "tolerations": "one node",
        "affinity": "one node",
    },
    "container": {
        "name": "the container name is the test's",
        "imagePullPolicy": "images are local",
        "ports": "host networking: the process binds its port itself",
        "readinessProbe": "the test polls the same path and port",
        "livenessProbe": "the test polls the same path and port",
        "startupProbe": "the test polls the same path and port",
    },
}
POD_FIELDS = {
    "containers",
    "initContainers",
    "securityContext",
    "terminationGracePeriodSeconds",
    "volumes",
} | set(NOT_REPRODUCED["pod"])
CONTAINER_FIELDS = {
    "image",
    "command",
    "args",
    "env",
    "envFrom",
    "resources",
    "securityContext",
    "volumeMounts",
} | set(NOT_REPRODUCED["container"])
POD_SECURITY = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"}
CONTAINER_SECURITY = POD_SECURITY - {"fsGroup"} | {
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "privileged",
    "capabilities",
}
DOWNWARD_API = {"status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}


class UnsupportedField(AssertionError):
    """The rendered spec uses a field this runner does not reproduce."""


def pod_template(workload: Doc) -> Doc:
    """The pod spec of a Deployment, Job or Pod."""
    return workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]


def _check_fields(where: str, present: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(present) - known)
    if unknown:
        raise UnsupportedField(f"{where}: {unknown} not reproduced by tests/chart/pod_runner.py")


def _quantity_bytes(quantity: str) -> int:
    units = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
    }
    for suffix, factor in units.items():
        if str(quantity).endswith(suffix):
            return int(float(str(quantity)[: -len(suffix)]) * factor)
    return int(float(quantity))


def _cpus(quantity: str) -> str:
    text = str(quantity)
    return f"{int(text[:-1]) / 1000:g}" if text.endswith("m") else f"{float(text):g}"


@dataclass
class RunSpec:
    """`<engine> run` arguments and the env file they read (secrets never on the command line)."""

    args: list[str]
    env: dict[str, str]
    grace_seconds: int
    image: str
    argv: list[str] = field(default_factory=list)


def resolve_env(docs: list[Doc], container: Doc, pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet builds it, Secrets included."""
    secrets = secret_data(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        _check_fields("envFrom", source, {"configMapRef"})
        configmap = find(docs, "ConfigMap", source["configMapRef"]["name"])
        assert configmap is not None, f"ConfigMap {source['configMapRef']['name']} not rendered"
        env.update({k: str(v) for k, v in (configmap.get("data") or {}).items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand_env_value(str(item["value"]), env)
            continue
        ref = item["valueFrom"]
        _check_fields(f"env {item['name']}", ref, {"secretKeyRef", "fieldRef", "configMapKeyRef"})
        if "secretKeyRef" in ref:
            name, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
            assert key in secrets.get(name, {}), f"{item['name']}: Secret {name} has no key {key}"
            env[item["name"]] = secrets[name][key]
        elif "configMapKeyRef" in ref:
            configmap = find(docs, "ConfigMap", ref["configMapKeyRef"]["name"]) or {}
            env[item["name"]] = str((configmap.get("data") or {})[ref["configMapKeyRef"]["key"]])
        else:
            path = ref["fieldRef"]["fieldPath"]
            values = DOWNWARD_API | {"metadata.name": pod_name, "metadata.namespace": "local"}
            if path not in values:
                raise UnsupportedField(f"env {item['name']}: fieldRef {path}")
            env[item["name"]] = values[path]
    return env


def run_spec(
    docs: list[Doc],
    workload: Doc,
    *,
    name: str,
    claims: Mapping[str, Path] | None = None,
    init: bool = False,
    index: int = 0,
) -> RunSpec:
    """`run` arguments reproducing one container of a rendered workload (see the module doc)."""
    pod = pod_template(workload)
    _check_fields(f"{workload['kind']} pod spec", pod, POD_FIELDS)
    container = (pod.get("initContainers", []) if init else pod["containers"])[index]
    _check_fields(f"container {container['name']}", container, CONTAINER_FIELDS)
    pod_security = pod.get("securityContext", {})
    security = container.get("securityContext", {})
    _check_fields("pod securityContext", pod_security, POD_SECURITY)
    _check_fields("container securityContext", security, CONTAINER_SECURITY)
    user = security.get("runAsUser", pod_security.get("runAsUser"))
    group = security.get("runAsGroup", pod_security.get("runAsGroup"))
    args = ["--name", name, "--network", "host", "--hostname", name, "--user", f"{user}:{group}"]
    if pod_security.get("fsGroup") is not None:
        args += ["--group-add", str(pod_security["fsGroup"])]
    if security.get("readOnlyRootFilesystem"):
        # NOTE: podman adds tmpfs on /tmp, /run, /var/tmp to --read-only unless told not to.
        args += ["--read-only", "--read-only-tmpfs=false"]
    drop = security.get("capabilities", {}).get("drop", [])
    args += [f"--cap-drop={cap}" for cap in drop]
    assert not security.get("capabilities", {}).get("add"), "capabilities.add not reproduced"
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    assert not security.get("privileged"), "privileged containers are not reproduced"
    seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
    assert seccomp.get("type") in (None, "RuntimeDefault"), seccomp  # the engine's default
    limits = container.get("resources", {}).get("limits", {})
    if "memory" in limits:
        args += ["--memory", str(_quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
        args += ["--cpus", _cpus(limits["cpu"])]
    for service in by_kind(docs, "Service"):
        meta = service["metadata"]
        for host in (
            meta["name"],
            f"{meta['name']}.{meta['namespace']}.svc",
            f"{meta['name']}.{meta['namespace']}.svc.cluster.local",
        ):
            args += ["--add-host", f"{host}:127.0.0.1"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        _check_fields("volumeMount", mount, {"name", "mountPath", "readOnly"})
        volume = volumes[mount["name"]]
        kinds = set(volume) - {"name"}
        if kinds == {"emptyDir"}:
            size = volume["emptyDir"].get("sizeLimit")
            options = f"rw,mode=1777{f',size={_quantity_bytes(size)}' if size else ''}"
            args += ["--tmpfs", f"{mount['mountPath']}:{options}"]
        elif kinds == {"persistentVolumeClaim"}:
            claim = volume["persistentVolumeClaim"]["claimName"]
            assert claims and claim in claims, f"no host folder given for PVC {claim}"
            read_only = mount.get("readOnly") or volume["persistentVolumeClaim"].get("readOnly")
            args += [
                "--volume",
                f"{claims[claim]}:{mount['mountPath']}:{'ro' if read_only else 'rw'}",
            ]
        else:
            raise UnsupportedField(f"volume {mount['name']}: {sorted(kinds)}")
    grace = int(pod.get("terminationGracePeriodSeconds", 30))
    args += ["--stop-timeout", str(grace)]
    command = container.get("command")
    if command:
        assert len(command) == 1, "a multi-word command would need --entrypoint JSON"
        args += ["--entrypoint", command[0]]
    env = resolve_env(docs, container, name)
    return RunSpec(args, env, grace, container["image"], list(container.get("args", [])))


class Containers:
    """Starts containers from RunSpecs; removes every one of them in `cleanup`."""

    def __init__(self, engine: str, workdir: Path) -> None:
        self.engine = engine
        self.workdir = workdir
        self.names: list[str] = []

    def _command(self, spec: RunSpec, *, detach: bool) -> list[str]:
        env_file = self.workdir / f"{spec.args[spec.args.index('--name') + 1]}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in spec.env.items()))
        env_file.chmod(0o600)
        self.names.append(spec.args[spec.args.index("--name") + 1])
        args = spec.args
        if Path(self.engine).name != "podman":  # NOTE: docker mounts no tmpfs on --read-only
            args = [a for a in args if a != "--read-only-tmpfs=false"]
        return [
            self.engine,
            "run",
            *(["--detach"] if detach else []),
            "--env-file",
            str(env_file),
            *args,
            spec.image,
            *spec.argv,
        ]

    def start(self, spec: RunSpec) -> str:
        """Start detached; returns the container name."""
        subprocess.run(
            self._command(spec, detach=True), check=True, capture_output=True, timeout=120
        )
        return self.names[-1]

    def run(self, spec: RunSpec, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run to completion (the container is kept for its logs until cleanup)."""
        return subprocess.run(
            self._command(spec, detach=False), capture_output=True, text=True, timeout=timeout
        )

    def logs(self, name: str, tail: int = 60) -> str:
        out = subprocess.run(
            [self.engine, "logs", "--tail", str(tail), name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout + out.stderr

    def state(self, name: str) -> dict[str, Any]:
        import json

        out = subprocess.run(
            [self.engine, "inspect", name], capture_output=True, text=True, timeout=60, check=True
        )
        return dict(json.loads(out.stdout)[0]["State"])

    def stop(self, name: str, grace: int) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds, as the kubelet does."""
        subprocess.run(
            [self.engine, "stop", "--time", str(grace), name],
            capture_output=True,
            timeout=grace + 60,
        )

    def cleanup(self) -> None:
        timeout_flag = ["--time", "0"] if Path(self.engine).name == "podman" else []
        for name in self.names:
            subprocess.run(
                [self.engine, "rm", "--force", *timeout_flag, name],
                capture_output=True,
                timeout=120,
            )
