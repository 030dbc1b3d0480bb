#!/usr/bin/env python3
"""Write requirements/*.lock: every transitive dependency of each image, pinned and hashed.

The images install these with `pip install --require-hashes --no-deps`, so a build installs
exactly the locked files or fails. Inputs come from pyproject.toml (one source of truth):

- consumer.lock: `dependencies` + the `consumer` extra (the consumer image);
- producer.lock: `dependencies` + the `producer` extra (the producer image);
- build.lock: `[build-system] requires` (setuptools/wheel that build creditstream itself in
  the images' build stage, with build isolation off so nothing unhashed is fetched).

Each lock records the sha256 of its inputs; tests/chart/test_images.py fails when pyproject.toml
changes without `make lock`.

    python scripts/lock_images.py            # regenerate every lock (needs uv and PyPI)
    python scripts/lock_images.py --check    # exit 1 when a lock's inputs drifted (offline)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = REPO_ROOT / "requirements"
# NOTE: the images run CPython 3.11 on Linux (Debian bookworm); resolve for exactly that.
PYTHON_VERSION = "3.11"
PYTHON_PLATFORM = "linux"
UV_VERSION = "0.13.8"  # pinned in pyproject.toml's dev extra too (tests check they agree)
INPUTS_PREFIX = "# inputs-sha256: "


@dataclass(frozen=True)
class Lock:
    """One lock file and the requirements it resolves."""

    name: str
    description: str
    requirements: tuple[str, ...]

    @property
    def path(self) -> Path:
        return LOCK_DIR / f"{self.name}.lock"

    @property
    def inputs_sha256(self) -> str:
        """Digest of the inputs (order-insensitive), recorded in the lock's header."""
        canonical = "\n".join(sorted(normalise(r) for r in self.requirements))
        return hashlib.sha256(canonical.encode()).hexdigest()


def normalise(requirement: str) -> str:
    """`Name[extra]==1.0` spelled one way: PEP 503 name, no spaces."""
    requirement = requirement.replace(" ", "")
    match = re.match(r"^([A-Za-z0-9._-]+)(.*)$", requirement)
    if not match:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() + match.group(2)


def locks(pyproject: Path = REPO_ROOT / "pyproject.toml") -> tuple[Lock, ...]:
    """The locks pyproject.toml asks for."""
    project = tomllib.loads(pyproject.read_text())
    base = tuple(project["project"]["dependencies"])
    extras = project["project"]["optional-dependencies"]
    return (
        Lock(
            "consumer",
            "the consumer image (creditstream[consumer])",
            base + tuple(extras["consumer"]),
        ),
        Lock(
            "producer",
            "the producer image (creditstream[producer])",
            base + tuple(extras["producer"]),
        ),
        Lock(
            "build",
            "the images' build stage ([build-system] requires)",
            tuple(project["build-system"]["requires"]),
        ),
    )


def recorded_inputs(lock_path: Path) -> str | None:
    """The inputs digest written in a lock's header (None when absent)."""
    if not lock_path.is_file():
        return None
    for line in lock_path.read_text().splitlines():
        if line.startswith(INPUTS_PREFIX):
            return line.removeprefix(INPUTS_PREFIX).strip()
    return None


def drifted(all_locks: tuple[Lock, ...]) -> list[str]:
    """Locks whose recorded inputs differ from pyproject.toml's (empty = up to date)."""
    return [
        f"{lock.path.relative_to(REPO_ROOT)}: inputs changed in pyproject.toml"
        for lock in all_locks
        if recorded_inputs(lock.path) != lock.inputs_sha256
    ]


def _uv() -> str:
    found = shutil.which(
        "uv", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if not found:
        raise SystemExit(f"uv not found: `make install` (dev extra pins uv=={UV_VERSION})")
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True)
    if version.stdout.split()[1] != UV_VERSION:
        raise SystemExit(
            f"{found} is {version.stdout.strip()}, the locks are made with uv {UV_VERSION}"
        )
    return found


def write(lock: Lock, uv: str) -> None:
    """Resolve one lock with uv and write it with its header."""
    LOCK_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"{lock.name}.in"
        source.write_text("\n".join(lock.requirements) + "\n")
        out = Path(tmp) / f"{lock.name}.lock"
        subprocess.run(
            [
                uv,
                "pip",
                "compile",
                str(source),
                "--generate-hashes",
                "--python-version",
                PYTHON_VERSION,
                "--python-platform",
                PYTHON_PLATFORM,
                "--no-header",
                "--quiet",
                "--output-file",
                str(out),
            ],
            check=True,
            timeout=600,
        )
        body = out.read_text().replace(str(source), f"{lock.name} inputs")
    header = (
        f"# Every transitive dependency of {lock.description}, pinned and hashed.\n"
        f"# Generated by `make lock` (scripts/lock_images.py: uv {UV_VERSION} pip compile "
        f"--generate-hashes, Python {PYTHON_VERSION}, {PYTHON_PLATFORM}). Do not edit.\n"
        f"{INPUTS_PREFIX}{lock.inputs_sha256}\n"
    )
    lock.path.write_text(header + body)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only report drifted locks.")
    args = parser.parse_args(argv)
    all_locks = locks()
    if args.check:
        problems = drifted(all_locks)
        print("\n".join(problems) or "locks up to date")
        return 1 if problems else 0
    uv = _uv()
    for lock in all_locks:
        write(lock, uv)
        print(lock.path.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
