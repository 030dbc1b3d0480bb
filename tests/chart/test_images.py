"""Dockerfiles: hadolint clean, and their install steps resolve (no Docker daemon needed).

Each Dockerfile's `pip install` line is installed, as written, into a fresh venv; the image's
commands then run with --help and import the modules they load lazily. The consumer venv must
not contain scikit-learn or pandas.

NOTE: to keep CI time down, wheels come from pip's cache, and a venv whose dependency set
(the pip line, pyproject.toml) was already verified in `.cache/image-venvs/` is reused: the
project itself is then reinstalled (--no-deps --force-reinstall), `pip check` re-run, and a
warning names the reuse. Delete `.cache/image-venvs/` to force a full reinstall.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO_ROOT

pytestmark = [pytest.mark.chart, pytest.mark.timeout(900)]

VENV_CACHE = REPO_ROOT / ".cache" / "image-venvs"
HADOLINT = Path(sys.executable).with_name("hadolint")


@dataclass(frozen=True)
class Image:
    """One Dockerfile and what its image must be able to run."""

    name: str
    dockerfile: Path
    commands: tuple[tuple[str, ...], ...]  # each run with --help
    modules: tuple[str, ...]  # imported lazily by those commands
    forbidden: tuple[str, ...] = ()


IMAGES = [
    pytest.param(
        Image(
            "consumer",
            REPO_ROOT / "services" / "consumer" / "Dockerfile",
            commands=(("consume",),),
            modules=(
                "creditstream.consumer",
                "creditstream.scoring",
                "creditstream.store",
                "creditstream.metrics",
                "onnxruntime",
                "psycopg",
                "sqlalchemy",
            ),
            forbidden=("sklearn", "pandas", "scipy", "skl2onnx"),
        ),
        id="consumer",
    ),
    pytest.param(
        Image(
            "producer",
            REPO_ROOT / "services" / "producer" / "Dockerfile",
            commands=(("produce",), ("download",), ("smoke-test",), ("predict",)),
            modules=(
                "creditstream.producer",
                "creditstream.client",
                "creditstream.data.download",
                "creditstream.synthetic",
                "pandas",
                "xlrd",
            ),
        ),
        id="producer",
    ),
]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined: list[str] = []
    buffer = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        joined.append(buffer + line)
        buffer = ""
    out = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def build_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """Instructions of the first stage (where dependencies are installed)."""
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages[0]


def pip_requirements(dockerfile: Path) -> list[str]:
    """Requirement arguments of every build-stage `pip install`, with paths mapped to the repo.

    COPY sources are checked to exist; a requirement under WORKDIR maps back to the repo root.
    """
    workdir = "/"
    requirements: list[str] = []
    for keyword, rest in build_stage(dockerfile):
        if keyword == "WORKDIR":
            workdir = rest
        elif keyword == "COPY":
            *sources, _dest = shlex.split(rest)
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"{dockerfile}: COPY source {source} missing"
        elif keyword == "RUN":
            for step in re.split(r"&&|;", rest):
                words = shlex.split(step)
                if "pip" not in " ".join(words[:2]) or "install" not in words:
                    continue
                args = words[words.index("install") + 1 :]
                for arg in args:
                    if arg.startswith("-"):
                        continue
                    requirements.append(
                        re.sub(rf"^{re.escape(workdir)}(?=\[|/|$)", str(REPO_ROOT), arg)
                    )
    assert requirements, f"{dockerfile}: no pip install in the build stage"
    return requirements


def base_python(dockerfile: Path) -> str:
    """The major.minor of the pinned python base image."""
    match = re.search(r"ARG PYTHON_IMAGE=python:(\d+\.\d+)\.\d+-slim", dockerfile.read_text())
    assert match, "the base image must be a pinned python:X.Y.Z-slim tag"
    return match.group(1)


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def prepared_venv(image: Image) -> Path:
    """A venv holding exactly the Dockerfile's pip install (see the module NOTE on reuse)."""
    requirements = pip_requirements(image.dockerfile)
    key = hashlib.sha256(
        json.dumps(requirements).encode() + (REPO_ROOT / "pyproject.toml").read_bytes()
    ).hexdigest()[:16]
    venv = VENV_CACHE / f"{image.name}-{key}"
    marker = venv / "verified.json"
    pip = [str(_venv_python(venv)), "-m", "pip", "--disable-pip-version-check"]
    if marker.is_file():
        warnings.warn(
            f"{image.name}: dependency set already verified in {venv}; reinstalled the project "
            "only (delete .cache/image-venvs/ for a full reinstall)",
            stacklevel=2,
        )
        subprocess.run(
            [*pip, "install", "--quiet", "--no-deps", "--force-reinstall", *requirements],
            check=True,
            timeout=600,
        )
    else:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([*pip, "install", "--quiet", *requirements], check=True, timeout=900)
        marker.write_text(json.dumps({"requirements": requirements}))
    check = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    return venv


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_is_hadolint_clean(image: Image) -> None:
    if not HADOLINT.is_file():
        pytest.fail(f"hadolint not installed at {HADOLINT}: pip install -e '.[chart]'")
    result = subprocess.run(
        [str(HADOLINT), str(image.dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_runtime_stage_is_minimal(image: Image) -> None:
    text = image.dockerfile.read_text()
    stages = re.findall(r"^FROM .*$", text, flags=re.M)
    assert len(stages) == 2, "multi-stage: build + runtime"
    runtime = text.split(stages[1], 1)[1]
    assert re.search(r"^USER 10001:10001$", runtime, flags=re.M), "non-root numeric UID"
    assert "apt-get" not in runtime and "pip install" not in runtime, (
        "no build tools in the final stage"
    )
    assert "COPY --from=build /opt/venv /opt/venv" in runtime


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_install_resolves_and_runs(image: Image) -> None:
    if base_python(image.dockerfile) != f"{sys.version_info.major}.{sys.version_info.minor}":
        pytest.fail(
            f"base image Python {base_python(image.dockerfile)} differs from this "
            f"interpreter's {sys.version_info[:2]}: the check would not be faithful"
        )
    venv = prepared_venv(image)
    cli = venv / "bin" / "creditstream"
    for command in image.commands:
        result = subprocess.run(
            [str(cli), *command, "--help"], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Usage" in result.stdout
    imports = "; ".join(f"import {m}" for m in image.modules)
    result = subprocess.run(
        [str(_venv_python(venv)), "-c", imports], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    if image.forbidden:
        probe = (
            "import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) "
            f"is not None for m in {list(image.forbidden)!r}}}))"
        )
        found = json.loads(
            subprocess.run(
                [str(_venv_python(venv)), "-c", probe], capture_output=True, text=True, check=True
            ).stdout
        )
        assert not any(found.values()), f"{image.name} image would contain {found}"


def test_pip_line_parser_maps_the_workdir_to_the_repo() -> None:
    reqs = pip_requirements(REPO_ROOT / "services" / "consumer" / "Dockerfile")
    assert reqs == [f"{REPO_ROOT}[consumer]"]
