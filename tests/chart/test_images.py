"""The images: hadolint-clean Dockerfiles, hashed locks in step with pyproject.toml, and the
BUILT images (podman or docker, `make images`) checked from the inside.

- locks: every transitive dependency pinned with hashes, installed with --require-hashes;
  a lock whose inputs drift from pyproject.toml fails here (`make lock` regenerates);
- layers: dependencies before code — a code edit rebuilds only the last layer;
- context: `.dockerignore` lets exactly the files the Dockerfiles need into the build;
- contents: each image runs its commands, imports what they load lazily, and the consumer
  holds no scikit-learn or pandas.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

import images
import lock_images
import pytest

from conftest import REPO_ROOT

pytestmark = [pytest.mark.chart, pytest.mark.timeout(900)]

HADOLINT = Path(sys.executable).with_name("hadolint")


@dataclass(frozen=True)
class Image:
    """One Dockerfile and what its image must be able to run."""

    name: str
    dockerfile: Path
    lock: str
    commands: tuple[tuple[str, ...], ...]  # each run with --help
    modules: tuple[str, ...]  # imported lazily by those commands
    forbidden: tuple[str, ...] = ()


IMAGES = [
    pytest.param(
        Image(
            "consumer",
            REPO_ROOT / "services" / "consumer" / "Dockerfile",
            "consumer",
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
            "producer",
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
    joined, buffer = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        joined.append(buffer + line)
        buffer = ""
    return [(w.split(" ", 1)[0].upper(), w.split(" ", 1)[1].strip()) for w in joined]


def stages(dockerfile: Path) -> dict[str, list[tuple[str, str]]]:
    """{stage name: its instructions}."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            current = rest.split(" AS ")[-1].strip()
            out[current] = []
        elif current is not None:
            out[current].append((keyword, rest))
    return out


def pip_installs(steps: list[tuple[str, str]]) -> list[list[str]]:
    """The argument lists of every `pip install` in these RUN steps."""
    found = []
    for keyword, rest in steps:
        if keyword != "RUN":
            continue
        for step in re.split(r"&&|;", rest):
            words = shlex.split(step)
            if any(w.endswith("pip") for w in words[:1]) and "install" in words:
                found.append(words[words.index("install") + 1 :])
    return found


# --- Dockerfiles -------------------------------------------------------------------------------
@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_is_hadolint_clean(image: Image) -> None:
    if not HADOLINT.is_file():
        pytest.fail(f"hadolint not installed at {HADOLINT}: pip install -e '.[chart]'")
    result = subprocess.run(
        [str(HADOLINT), str(image.dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_dependencies_come_only_from_the_hashed_lock(image: Image) -> None:
    """The deps stage sees the lock and nothing else of the repo; every install is hashed."""
    steps = stages(image.dockerfile)
    assert list(steps) == ["deps", "build", "runtime"]
    copies = [rest for keyword, rest in steps["deps"] if keyword == "COPY"]
    assert copies == [f"requirements/{image.lock}.lock /tmp/requirements.lock"]
    (deps_install,) = pip_installs(steps["deps"])
    assert {"--require-hashes", "--no-deps"} <= set(deps_install)
    assert deps_install[-2:] == ["-r", "/tmp/requirements.lock"]
    build_installs = pip_installs(steps["build"])
    assert [a for a in build_installs[0] if a != "--no-cache-dir"] == [
        "--require-hashes",
        "--no-deps",
        "-r",
        "/tmp/build.lock",
    ]
    # NOTE: the project itself: no dependency resolution, no index, no isolated build env.
    assert {"--no-deps", "--no-build-isolation", "--no-index"} <= set(build_installs[1])


@pytest.mark.parametrize("image", IMAGES)
def test_runtime_stage_is_minimal_and_orders_layers_by_churn(image: Image) -> None:
    runtime = stages(image.dockerfile)["runtime"]
    assert ("USER", "10001:10001") in runtime, "non-root numeric UID"
    assert not pip_installs(runtime) and not any("apt-get" in r for _, r in runtime)
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert copies[0] == "--from=deps /opt/venv /opt/venv", "dependencies first"
    assert copies[-1] == "--from=build /opt/creditstream/lib /opt/creditstream/lib", "code last"


# --- locks -------------------------------------------------------------------------------------
def _lock_pins(path: Path) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s\\]+)", path.read_text(), flags=re.M)
    return {lock_images.normalise(name): version for name, version in pins}


def test_locks_are_in_step_with_pyproject() -> None:
    """Fails when a pin is added or changed in pyproject.toml without `make lock`."""
    assert lock_images.drifted(lock_images.locks()) == []


@pytest.mark.parametrize("lock", lock_images.locks(), ids=lambda lock: lock.name)
def test_every_pyproject_pin_is_locked_and_every_lock_line_hashed(
    lock: lock_images.Lock,
) -> None:
    pins = _lock_pins(lock.path)
    for requirement in lock.requirements:
        match = re.match(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==(\S+)$", requirement)
        if match:  # NOTE: build-system requires are ranges; their pins are the lock's choice
            name = lock_images.normalise(match.group(1))
            assert pins.get(name) == match.group(2), f"{lock.path.name}: {requirement}"
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.path.read_text().split("\n", 3)[3])
    for block in blocks:
        assert "--hash=sha256:" in block, f"{lock.path.name}: no hash for {block.splitlines()[0]}"


def test_a_dependency_added_to_pyproject_is_reported_as_drift(tmp_path: Path) -> None:
    text = (REPO_ROOT / "pyproject.toml").read_text()
    changed = text.replace(
        '  "onnxruntime==1.32.0",\n', '  "onnxruntime==1.32.0",\n  "attrs==25.1.0",\n', 1
    )
    assert changed != text
    (tmp_path / "pyproject.toml").write_text(changed)
    assert lock_images.drifted(lock_images.locks(tmp_path / "pyproject.toml")) == [
        "requirements/consumer.lock: inputs changed in pyproject.toml"
    ]


def test_the_lock_tool_is_the_pinned_one() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert f"uv=={lock_images.UV_VERSION}" in project["project"]["optional-dependencies"]["dev"]


# --- built images --------------------------------------------------------------------------------
def _run(engine: str, ref: str, *args: str, entrypoint: str | None = None) -> str:
    cmd = [
        engine,
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--user",
        "10001:10001",
        "--cap-drop",
        "ALL",
    ]
    if images.engine_name(engine) == "podman":
        cmd.append("--read-only-tmpfs=false")
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    out = subprocess.run([*cmd, ref, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


@pytest.mark.images
@pytest.mark.parametrize("image", IMAGES)
def test_built_image_runs_its_commands_and_holds_only_what_it_needs(
    built_images: tuple[str, dict[str, str]], image: Image
) -> None:
    engine, refs = built_images
    ref = refs[image.name]
    for command in image.commands:
        assert "Usage" in _run(engine, ref, *command, "--help")
    _run(engine, ref, "-c", "; ".join(f"import {m}" for m in image.modules), entrypoint="python")
    probe = (
        "import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) "
        f"is not None for m in {list(image.forbidden)!r}}}))"
    )
    found = json.loads(_run(engine, ref, "-c", probe, entrypoint="python"))
    assert not any(found.values()), f"{image.name} image contains {found}"
    # NOTE: what pip installed is exactly the lock (plus pip/setuptools of the venv itself).
    frozen = _run(engine, ref, "-m", "pip", "freeze", "--all", entrypoint="python")
    installed = {
        lock_images.normalise(n): v for n, v in re.findall(r"^([^=\s]+)==(\S+)$", frozen, re.M)
    }
    assert "creditstream @ file:///src" in frozen.splitlines(), "the project, from the build stage"
    for tool in ("pip", "setuptools"):
        installed.pop(tool, None)
    assert installed == _lock_pins(REPO_ROOT / "requirements" / f"{image.lock}.lock")


@pytest.mark.images
def test_a_code_edit_rebuilds_only_the_code_layer(
    built_images: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """Build the consumer from a copy of the context with one .py file changed: every layer
    but the last (the code) is reused byte for byte, so onnxruntime is not reinstalled."""
    engine, refs = built_images
    context = tmp_path / "context"
    for name in (
        "pyproject.toml",
        "README.md",
        ".dockerignore",
        "requirements",
        "models",
        "services",
    ):
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(source, context / name)
    edited = context / "services" / "creditstream" / "__init__.py"
    edited.write_text(edited.read_text() + "\n# an edit\n")
    ref = f"localhost/creditstream-consumer:layer-test-{uuid.uuid4().hex[:8]}"
    python_image = images.build_base(engine)
    cmd = [
        engine,
        "build",
        "--network",
        "host",
        "--build-arg",
        f"PYTHON_IMAGE={python_image}",
        "-f",
        str(context / "services" / "consumer" / "Dockerfile"),
        "-t",
        ref,
        str(context),
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "pip install --no-cache-dir --require-hashes" not in _fresh_steps(out.stdout), (
            "the dependency install ran again"
        )
        before = _layers(engine, refs["consumer"])
        after = _layers(engine, ref)
        assert len(before) == len(after)
        assert before[:-1] == after[:-1], "a layer below the code changed"
        assert before[-1] != after[-1], "the code layer did not change: the edit was not built"
    finally:
        subprocess.run([engine, "rmi", "--force", ref], capture_output=True, timeout=120)


def _fresh_steps(build_log: str) -> str:
    """Build steps that ran (podman prints `--> Using cache …` under the ones it skipped)."""
    steps = re.split(r"\n(?=\[\d+/\d+\] STEP|STEP \d+)", build_log)
    return "\n".join(s.splitlines()[0] for s in steps if s and "Using cache" not in s)


def _layers(engine: str, ref: str) -> list[str]:
    out = subprocess.run(
        [engine, "image", "inspect", ref], capture_output=True, text=True, timeout=60, check=True
    )
    return list(json.loads(out.stdout)[0]["RootFS"]["Layers"])


@pytest.mark.images
def test_build_context_is_exactly_what_the_dockerfiles_need(
    built_images: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """The engine applies .dockerignore: copy the whole context into a probe image and list it."""
    engine, _ = built_images
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {images.build_base(engine)}\nCOPY . /context\n")
    ref = f"localhost/creditstream-context-probe:{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(
            [engine, "build", "-q", "-f", str(dockerfile), "-t", ref, str(REPO_ROOT)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        listing = _run(
            engine,
            ref,
            "-c",
            "import os; [print(os.path.relpath(os.path.join(d, f), "
            "'/context')) for d, _, fs in os.walk('/context') for f in fs]",
            entrypoint="python",
        )
    finally:
        subprocess.run([engine, "rmi", "--force", ref], capture_output=True, timeout=120)
    sent = set(listing.split())
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    needed = {
        f
        for f in tracked
        if f
        in {
            "pyproject.toml",
            "README.md",
            "models/credit_default.onnx",
            "models/credit_default.features.onnx",
            "models/credit_default.model.onnx",
            "models/model_card.json",
        }
        or re.fullmatch(r"requirements/[^/]+\.lock", f)
        or f.startswith("services/creditstream/")
    }
    assert needed <= sent, sorted(needed - sent)
    extra = {f for f in sent if f not in needed and not f.startswith("services/creditstream/")}
    assert extra == set(), sorted(extra)
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in sent)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        pytest.param(
            "creditstream-consumer:0.1.0",
            "docker.io/library/creditstream-consumer:0.1.0",
            id="short",
        ),
        pytest.param(
            "team/creditstream-consumer:0.1.0",
            "docker.io/team/creditstream-consumer:0.1.0",
            id="docker-hub-namespace",
        ),
        pytest.param(
            "registry.example.com/cs/consumer:1",
            "registry.example.com/cs/consumer:1",
            id="registry",
        ),
        pytest.param(
            "localhost/creditstream-consumer:0.1.0",
            "localhost/creditstream-consumer:0.1.0",
            id="localhost",
        ),
    ],
)
def test_kubelet_name_normalises_like_containerd(ref: str, expected: str) -> None:
    assert images.kubelet_name(ref) == expected


@pytest.mark.images
def test_kind_archive_names_the_images_as_the_kubelet_resolves_them(
    built_images: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """`make kind-load` with podman: the archive must carry docker.io/library/… names, since
    podman's own `localhost/…` would never match the chart's `creditstream-consumer:0.1.0`."""
    import tarfile

    engine, refs = built_images
    archive = tmp_path / "images.tar"
    names = images.save_for_kubelet(engine, sorted(refs.values()), archive)
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            assert member is not None
            manifest = json.load(member)
    finally:
        archive.unlink(missing_ok=True)
    tags = {tag for entry in manifest for tag in entry["RepoTags"]}
    assert tags == {f"docker.io/library/{ref}" for ref in refs.values()} == set(names)


def test_an_engine_cli_without_its_daemon_is_not_chosen(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """These machines have a docker CLI but no daemon: `make images` must not pick it."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine to try")
    if images.engine_problem(docker) is None:
        pytest.skip("docker has a running daemon here")
    only_docker = tmp_path / "bin"
    only_docker.mkdir()
    (only_docker / "docker").symlink_to(docker)
    monkeypatch.setenv("PATH", str(only_docker))
    monkeypatch.delenv("CONTAINER_ENGINE", raising=False)
    with pytest.raises(images.EngineError, match="docker info failed"):
        images.detect_engine()
    podman = shutil.which("podman", path="/usr/bin:/usr/local/bin")
    if podman is not None:
        (only_docker / "podman").symlink_to(podman)
        assert images.detect_engine() == str(only_docker / "podman")
