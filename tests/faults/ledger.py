"""Figures of fault runs, written by the tests under .cache/reliability/ (never hand-written).

`python -m tests.faults.report` (`make reliability-report`) turns them into the table in
docs/reliability.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from creditstream.settings import REPO_ROOT

LEDGER_DIR = Path(
    os.environ.get("CREDITSTREAM_RELIABILITY_DIR", REPO_ROOT / ".cache" / "reliability")
)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _commit() -> str:
    """HEAD, marked `+dirty` when the code under test differs from it."""
    try:
        dirty = _git("status", "--porcelain", "--", "services", "tests")
        return _git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record_run(test: str, variant: str, **figures: Any) -> Path:
    """Write one run's measured figures (overwrites the previous run of the same variant)."""
    LEDGER_DIR.mkdir(parents=True, exist_ok=True)
    entry = {
        "test": test,
        "variant": variant,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "cpus": os.cpu_count(),
        **figures,
    }
    path = LEDGER_DIR / f"{test}--{variant}.json"
    path.write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n")
    return path


def load_runs() -> list[dict[str, Any]]:
    """Every recorded run, sorted by test then variant."""
    if not LEDGER_DIR.is_dir():
        return []
    runs = [json.loads(p.read_text()) for p in sorted(LEDGER_DIR.glob("*.json"))]
    return sorted(runs, key=lambda r: (r["test"], r["variant"]))
