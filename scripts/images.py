#!/usr/bin/env python3
"""Build the consumer and producer images with podman or docker and report what was built.

Standard library only, so `make images` needs no venv. The image tag is the chart's
`appVersion` (charts/creditstream/Chart.yaml): the tag the chart and `k8s/rendered` use by
default, so what `make images` builds is what they run.

    python scripts/images.py engine                 # the container engine that works here
    python scripts/images.py tag                    # the tag (Chart.yaml appVersion)
    python scripts/images.py base [--force]         # local Python base from Debian packages
    python scripts/images.py build [--python-image IMAGE] [--tag TAG] [consumer] [producer]
    python scripts/images.py report                 # size and layer count of the built images
    python scripts/images.py kind-load --cluster NAME

Where no registry is reachable (these machines), `base` builds a Debian bookworm base with
debootstrap (python3, python3-venv, ca-certificates, `python` on PATH, this machine's CA
bundle) and `build --python-image localhost/creditstream-python:3.11-bookworm` uses it; the
Dockerfiles' own default stays the official python image.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect as pyinspect
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART_YAML = REPO_ROOT / "charts" / "creditstream" / "Chart.yaml"
BASE_IMAGE = "localhost/creditstream-python:3.11-bookworm"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# NOTE: trimmed from the base like the official slim images do; nothing at run time reads them.
BASE_TRIM = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
)
ENGINES = ("podman", "docker")
# NOTE: the digest of the base's recipe (build_base's code, the constants it reads, this
# machine's CA bundle) travels as a label; a base without it or with another is rebuilt.
BASE_RECIPE_LABEL = "io.creditstream.base-recipe"
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)


@dataclass(frozen=True)
class ImageSpec:
    """One image: its Dockerfile and the repository the chart's values name."""

    component: str
    repository: str  # consumer.image.repository / producer.image.repository in values.yaml
    dockerfile: Path

    def ref(self, tag: str) -> str:
        """`repository:tag`, as the chart renders it with an empty image.registry."""
        return f"{self.repository}:{tag}"


IMAGES: tuple[ImageSpec, ...] = (
    ImageSpec("consumer", "creditstream-consumer", REPO_ROOT / "services/consumer/Dockerfile"),
    ImageSpec("producer", "creditstream-producer", REPO_ROOT / "services/producer/Dockerfile"),
)


class EngineError(RuntimeError):
    """No usable container engine, or an engine command failed."""


def chart_tag(chart_yaml: Path = CHART_YAML) -> str:
    """The chart's appVersion: the default tag of both images."""
    match = re.search(r'^appVersion:\s*"?([^"\s]+)"?\s*$', chart_yaml.read_text(), re.M)
    if not match:
        raise SystemExit(f"{chart_yaml}: no appVersion")
    return match.group(1)


def engine_problem(binary: str) -> str | None:
    """Why this engine cannot build here (None when it can): the CLI alone is not enough."""
    try:
        out = subprocess.run([binary, "info"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{binary} info: {exc}"
    if out.returncode != 0:
        return f"{binary} info failed: {(out.stderr or out.stdout).strip().splitlines()[-1:]}"
    return None


def detect_engine() -> str:
    """CONTAINER_ENGINE if set, else the first of podman, docker that answers `info`."""
    wanted = os.environ.get("CONTAINER_ENGINE")
    candidates = [wanted] if wanted else list(ENGINES)
    problems = []
    for name in candidates:
        binary = shutil.which(name)
        if binary is None:
            problems.append(f"{name}: not on PATH")
            continue
        problem = engine_problem(binary)
        if problem is None:
            return binary
        problems.append(problem)
    raise EngineError(
        "no working container engine (" + "; ".join(problems) + "). Install podman "
        "(scripts/setup_podman.sh on Debian) or start the docker daemon."
    )


def engine_name(engine: str) -> str:
    """`podman` or `docker` for a binary path."""
    return Path(engine).name


def image_exists(engine: str, ref: str) -> bool:
    """Whether the engine's local store holds this image."""
    return (
        subprocess.run(
            [engine, "image", "inspect", ref], capture_output=True, text=True, timeout=60
        ).returncode
        == 0
    )


def image_labels(engine: str, ref: str) -> dict[str, str] | None:
    """The labels of a local image; None when the engine's store does not hold it."""
    out = subprocess.run(
        [engine, "image", "inspect", ref], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        return None
    config = json.loads(out.stdout)[0].get("Config") or {}
    return dict(config.get("Labels") or {})


def base_recipe(ca_bundle: Path = HOST_CA_BUNDLE) -> str:
    """Digest of what build_base makes: its code, the constants it reads, the CA bundle."""
    digest = hashlib.sha256()
    digest.update(pyinspect.getsource(build_base).encode())
    recipe = [DEBIAN_SUITE, BASE_PACKAGES, BASE_TRIM, BASE_CHANGES, BASE_RECIPE_LABEL]
    digest.update(json.dumps(recipe).encode())
    digest.update(ca_bundle.read_bytes())
    return digest.hexdigest()[:16]


def base_is_current(engine: str, image: str, recipe: str | None = None) -> bool:
    """Whether `image` exists and carries this recipe's digest."""
    labels = image_labels(engine, image)
    return labels is not None and labels.get(BASE_RECIPE_LABEL) == (recipe or base_recipe())


def build_base(engine: str, *, force: bool = False, image: str = BASE_IMAGE) -> str:
    """A Debian bookworm minbase with CPython 3.11, imported as `image`.

    Skipped when `image` exists and was built from this recipe (base_recipe(), its label);
    rebuilt when it exists from another recipe or without one.
    """
    recipe = base_recipe()
    if not force and base_is_current(engine, image, recipe):
        print(f"{image}: present, recipe {recipe} (--force to rebuild)")
        return image
    if image_exists(engine, image):
        print(f"{image}: built from another recipe: rebuilding ({recipe})")
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None or os.geteuid() != 0:
        raise SystemExit(
            "the local base needs debootstrap run as root (apt-get install debootstrap); "
            "or pass PYTHON_IMAGE=python:3.11.11-slim-bookworm where a registry is reachable"
        )
    started = time.monotonic()
    cache = REPO_ROOT / ".cache"
    cache.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="base-image-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            check=True,
            timeout=1800,
            stdout=subprocess.DEVNULL,
        )
        (rootfs / "usr/bin/python").symlink_to("python3")
        # NOTE: pip inside the image builds must trust what this machine trusts (a TLS proxy
        # may sit between it and PyPI), so the host's CA bundle replaces Debian's.
        shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        for relative in BASE_TRIM:
            target = rootfs / relative
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
        shutil.rmtree(rootfs)
        subprocess.run(
            [
                engine,
                "import",
                *(arg for change in BASE_CHANGES for arg in ("--change", change)),
                "--change",
                f"LABEL {BASE_RECIPE_LABEL}={recipe}",
                str(archive),
                image,
            ],
            check=True,
            timeout=600,
            stdout=subprocess.DEVNULL,
        )
    print(f"{image}: built from Debian {DEBIAN_SUITE} in {time.monotonic() - started:.0f} s")
    return image


@dataclass(frozen=True)
class Built:
    """What one build produced."""

    ref: str
    seconds: float
    size_bytes: int
    layers: int


def inspect(engine: str, ref: str) -> tuple[int, int]:
    """(size in bytes, number of layers) of a local image."""
    out = subprocess.run(
        [engine, "image", "inspect", ref], capture_output=True, text=True, timeout=60, check=True
    )
    (info,) = json.loads(out.stdout)
    return int(info["Size"]), len(info["RootFS"]["Layers"])


def build(
    engine: str, spec: ImageSpec, tag: str, python_image: str | None, *, quiet: bool = False
) -> Built:
    """Build one image from the repository root (layer cache on) and inspect it."""
    ref = spec.ref(tag)
    cmd = [engine, "build", "--network", "host", "-f", str(spec.dockerfile), "-t", ref]
    if python_image:
        cmd += ["--build-arg", f"PYTHON_IMAGE={python_image}"]
    started = time.monotonic()
    out = subprocess.run(
        [*cmd, str(REPO_ROOT)], timeout=3600, text=True, capture_output=quiet, check=False
    )
    if out.returncode != 0:
        tail = (out.stdout or "")[-4000:] + (out.stderr or "")[-4000:] if quiet else ""
        raise EngineError(f"{' '.join(cmd)} failed ({out.returncode}){tail and chr(10) + tail}")
    seconds = time.monotonic() - started
    size, layers = inspect(engine, ref)
    return Built(ref, seconds, size, layers)


def report_line(built: Built) -> str:
    """One line of the `make images` report."""
    return (
        f"{built.ref:<32} {built.size_bytes / 1e6:8.1f} MB {built.layers:3d} layers"
        f"   built in {built.seconds:6.1f} s"
    )


def kind_load(engine: str, refs: list[str], cluster: str) -> None:
    """Load local images into a kind cluster under the names the kubelet will look for.

    NOTE: the kubelet reads `creditstream-consumer:0.1.0` as
    `docker.io/library/creditstream-consumer:0.1.0`; podman stores a short name as
    `localhost/...`, so its archive is re-tagged with the docker.io name before `kind load`.
    """
    kind = shutil.which("kind")
    if kind is None:
        raise SystemExit("kind not found on PATH (https://kind.sigs.k8s.io)")
    if engine_name(engine) == "docker":
        subprocess.run([kind, "load", "docker-image", "--name", cluster, *refs], check=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "images.tar"
        save_for_kubelet(engine, refs, archive)
        subprocess.run([kind, "load", "image-archive", "--name", cluster, str(archive)], check=True)


def kubelet_name(ref: str) -> str:
    """The fully qualified name a kubelet (containerd) resolves a short image reference to."""
    name = ref.split("@")[0]
    first = name.split("/")[0]
    if "/" not in name:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"


def save_for_kubelet(engine: str, refs: list[str], archive: Path) -> list[str]:
    """A docker-archive of the images, tagged with the names the kubelet resolves."""
    names = [kubelet_name(ref) for ref in refs]
    for ref, name in zip(refs, names, strict=True):
        subprocess.run([engine, "tag", ref, name], check=True, timeout=60)
    cmd = [engine, "save", "-o", str(archive)]
    if engine_name(engine) == "podman":
        cmd += ["--format", "docker-archive", "--multi-image-archive"]
    subprocess.run([*cmd, *names], check=True, timeout=600)
    return names


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("engine", help="Print the container engine that works here.")
    sub.add_parser("tag", help="Print the image tag (the chart's appVersion).")
    base = sub.add_parser("base", help=f"Build {BASE_IMAGE} from Debian packages.")
    base.add_argument("--force", action="store_true", help="Rebuild even if present.")
    build_cmd = sub.add_parser("build", help="Build the images and report size and layers.")
    build_cmd.add_argument(
        "components", nargs="*", help="consumer and/or producer (default: both)."
    )
    build_cmd.add_argument("--tag", default=None, help="Image tag (default: appVersion).")
    build_cmd.add_argument(
        "--python-image", default=None, help="PYTHON_IMAGE build-arg (default: the Dockerfile's)."
    )
    sub.add_parser("report", help="Size and layer count of the built images.")
    load = sub.add_parser("kind-load", help="Load the built images into a kind cluster.")
    load.add_argument("--cluster", required=True)
    load.add_argument("--tag", default=None)
    args = parser.parse_args(argv)

    if args.command == "tag":
        print(chart_tag())
        return 0
    try:
        engine = detect_engine()
    except EngineError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "engine":
        print(engine)
    elif args.command == "base":
        build_base(engine, force=args.force)
    elif args.command == "build":
        tag = args.tag or chart_tag()
        if unknown := set(args.components) - {s.component for s in IMAGES}:
            parser.error(f"unknown image(s): {sorted(unknown)}")
        wanted = [s for s in IMAGES if not args.components or s.component in args.components]
        built = [build(engine, spec, tag, args.python_image) for spec in wanted]
        print(f"\n{engine_name(engine)} images (base {args.python_image or 'Dockerfile default'}):")
        for item in built:
            print(report_line(item))
    elif args.command == "report":
        tag = chart_tag()
        for spec in IMAGES:
            size, layers = inspect(engine, spec.ref(tag))
            print(report_line(Built(spec.ref(tag), 0.0, size, layers)))
    elif args.command == "kind-load":
        tag = args.tag or chart_tag()
        kind_load(engine, [s.ref(tag) for s in IMAGES], args.cluster)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
