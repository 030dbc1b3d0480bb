"""Where the time goes: py-spy samples of a consumer drain or a producer run, by concern.

Run only when a target is missed (full mode): the profiled run is a separate, untimed scenario,
since sampling costs CPU. The summary attributes each sample of the consumer's serving loop or
the producer's publishing run (start-up excluded) to the innermost frame of a known concern.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

SERVE_FRAME: Final = "Consumer._serve"
PUBLISH_FRAME: Final = "ConfirmingPublisher.run"

# (concern, substrings of a py-spy frame "function (file:line)"), checked innermost first.
CONCERNS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("inference (onnxruntime)", ("onnxruntime", "creditstream/scoring.py")),
    (
        "results store (SQLAlchemy + driver + database wait)",
        ("psycopg", "sqlalchemy", "sqlite3", "creditstream/store.py"),
    ),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("synthetic records (numpy sampling)", ("creditstream/synthetic.py",)),
    ("JSON decode/encode + validation", ("json/", "creditstream/codec.py")),
    ("batching (features matrix, prediction objects)", ("creditstream/batcher.py",)),
    ("AMQP client (pika: frames, publish, confirm wait, ack)", ("pika/",)),
)
OTHER: Final = "other (consumer loop, interpreter)"


def py_spy() -> str | None:
    """Path of the py-spy binary next to this interpreter, or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.is_file():
        return str(beside)
    return shutil.which("py-spy")


def concern_of(stack: list[str]) -> str:
    """The concern of one sample: the innermost frame that matches one."""
    for frame in reversed(stack):
        for concern, needles in CONCERNS:
            if any(needle in frame for needle in needles):
                return concern
    return OTHER


def summarize_raw(lines: Iterable[str], top: int = 12, root: str = SERVE_FRAME) -> dict[str, Any]:
    """Concern shares and the heaviest frames of py-spy `--format raw` output under `root`."""
    concerns: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack_text, _, count_text = line.rstrip().rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        frames = stack_text.split(";")
        starts = [i for i, frame in enumerate(frames) if frame.startswith(root)]
        if not starts:
            continue  # start-up, imports, the HTTP thread
        frames = frames[starts[0] :]
        count = int(count_text)
        total += count
        concerns[concern_of(frames)] += count
        self_time[frames[-1]] += count
        for frame in set(frames[1:]):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100.0 * n / total, 1)] for name, n in counter.most_common(top)]

    if total == 0:
        return {"samples": 0, "concerns": [], "inclusive": [], "self": []}
    return {
        "samples": total,
        "concerns": share(concerns),
        "inclusive": share(inclusive),
        "self": share(self_time),
    }


def record_command(binary: str, out: Path, command: list[str], rate_hz: int = 100) -> list[str]:
    """The py-spy command that runs `command` and writes raw samples to `out`."""
    return [
        binary,
        "record",
        "--format",
        "raw",
        "--rate",
        str(rate_hz),
        "--output",
        str(out),
        "--",
        *command,
    ]


def run_profiled(
    binary: str,
    out: Path,
    command: list[str],
    env: dict[str, str],
    log: Path,
    timeout: float,
    root: str = SERVE_FRAME,
) -> dict[str, Any]:
    """Run `command` under py-spy until it exits; summarise the samples."""
    with log.open("wb") as handle:
        subprocess.run(
            record_command(binary, out, command),
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    if not out.is_file():
        raise RuntimeError(f"py-spy wrote no samples (see {log})")
    with out.open(encoding="utf-8", errors="replace") as samples:
        return summarize_raw(samples, root=root)
