"""The demo's load: burst, pause, burst, each a `creditstream produce --rate R` process.

With the real data set the bursts are consecutive row ranges (rows 1-15,000, then
15,001-30,000), so every record is scored exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from creditstream.harness.processes import Process, ProcessGroup
from creditstream.settings import Settings

# NOTE: well below one replica's throughput with the chart's knobs (see demo/values.py), so
# more replicas are asked for only by the backlog built while scaling from zero; low enough
# that a 15,000-record burst lasts ~30 s.
DEFAULT_BURST_RATE: Final = 500.0


@dataclass(frozen=True)
class LoadProfile:
    """Burst, pause, burst at a fixed rate: wake the consumers twice and scale them past one."""

    first_burst: int = 15_000
    pause_s: float = 45.0
    second_burst: int = 15_000
    rate: float | None = None  # records/s per burst; None: DEFAULT_BURST_RATE

    @property
    def records_per_s(self) -> float:
        """The producer's --rate for every burst."""
        return self.rate or DEFAULT_BURST_RATE

    @property
    def bursts(self) -> list[int]:
        """Records per burst, in order."""
        return [n for n in (self.first_burst, self.second_burst) if n]


@dataclass(frozen=True)
class DataChoice:
    """Where the demo's records come from, said out loud."""

    kind: str  # "data set" | "downloaded data set" | "synthetic"
    path: Path | None
    note: str


@dataclass(frozen=True)
class Burst:
    """One planned `creditstream produce` run."""

    name: str
    records: int
    delay_s: float  # after the previous burst finished
    data: Path | None  # None: --synthetic
    rows: str = ""


@dataclass(frozen=True)
class FinishedBurst:
    """A producer that exited."""

    name: str
    records: int
    exit_code: int
    seconds: float


def burst_row_ranges(total_rows: int, bursts: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Consecutive [start, end) row ranges per burst, wrapping around past the last row.

    Bursts that fit in the data set together get disjoint rows (each record scored once);
    larger ones start over at row 0 (the producer gives the repeats new request ids).
    """
    if total_rows <= 0:
        raise ValueError("the data set has no rows")
    ranges: list[list[tuple[int, int]]] = []
    start = 0
    for records in bursts:
        parts: list[tuple[int, int]] = []
        left = records
        while left > 0:
            end = min(start + left, total_rows)
            parts.append((start, end))
            left -= end - start
            start = end % total_rows
        ranges.append(parts)
    return ranges


def describe_rows(parts: Sequence[tuple[int, int]]) -> str:
    """`rows 15,001-30,000` (1-based, inclusive) for a burst's row ranges."""
    return "rows " + " + ".join(f"{start + 1:,}-{end:,}" for start, end in parts)


def write_burst_files(path: Path, bursts: Sequence[int], out_dir: Path) -> list[tuple[Path, str]]:
    """One CSV per burst with its slice of the data set; (file, row description) per burst."""
    from creditstream.data.dataset import load_dataset

    frame = load_dataset(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for index, parts in enumerate(burst_row_ranges(len(frame), bursts), start=1):
        target = out_dir / f"burst-{index}.csv"
        slices = [frame.iloc[start:end] for start, end in parts]
        slices[0].iloc[0:0].to_csv(target, index=False)
        for piece in slices:
            piece.to_csv(target, mode="a", header=False, index=False)
        files.append((target, describe_rows(parts)))
    return files


def plan_bursts(profile: LoadProfile, data: DataChoice, records_dir: Path) -> list[Burst]:
    """The bursts of the profile; with a data file, each gets its own slice of the rows."""
    sizes = profile.bursts
    delays = [0.0] + [profile.pause_s] * (len(sizes) - 1)
    names = [f"burst {i}" for i in range(1, len(sizes) + 1)]
    if data.path is None:
        return [
            Burst(n, r, d, None, "synthetic") for n, r, d in zip(names, sizes, delays, strict=True)
        ]
    files = write_burst_files(data.path, sizes, records_dir)
    return [
        Burst(n, r, d, path, rows)
        for n, r, d, (path, rows) in zip(names, sizes, delays, files, strict=True)
    ]


def describe_load(profile: LoadProfile, bursts: Sequence[Burst]) -> str:
    """`burst 1: 15,000 (rows 1-15,000) at 500/s -> pause 45 s -> burst 2: ...`."""
    parts = []
    for index, burst in enumerate(bursts):
        if index:
            parts.append(f"pause {burst.delay_s:g} s")
        parts.append(
            f"{burst.name}: {burst.records:,} ({burst.rows}) at {profile.records_per_s:g}/s"
        )
    return " -> ".join(parts)


def bursts_text(bursts: Sequence[Burst]) -> str:
    """`15,000` or `5,000/15,000`: the distinct burst sizes."""
    return "/".join(f"{n:,}" for n in sorted({b.records for b in bursts}))


class LoadDriver:
    """Runs the bursts one after the other as `creditstream produce --rate R` processes."""

    def __init__(
        self, settings: Settings, profile: LoadProfile, bursts: Sequence[Burst], run_dir: Path
    ) -> None:
        self.profile = profile
        self.run_id = settings.run_id
        self.group = ProcessGroup(run_dir, settings, stop_timeout_s=10)
        self.active: tuple[Burst, Process, float] | None = None  # with its start time
        self.finished: list[FinishedBurst] = []
        self._plan = list(bursts)
        self._next_at = 0.0

    def burst_run_id(self, name: str) -> str:
        """The producer's --run-id for a burst: its message ids are `<this>-<sequence>`."""
        return f"{self.run_id}-{name.replace(' ', '')}"

    def _start(self, burst: Burst) -> Process:
        tag = burst.name.replace(" ", "")
        args = ["produce", "--limit", str(burst.records), "--no-progress"]
        args += ["--run-id", self.burst_run_id(burst.name)]
        args += ["--rate", f"{self.profile.records_per_s:g}"]
        args += ["--synthetic"] if burst.data is None else ["--data", str(burst.data)]
        return self.group.start(args, name=f"producer-{tag}")

    def poll(self, now: float) -> str:
        """Advance the profile at `now` (seconds since the start); the current phase label."""
        if self.active is not None:
            burst, process, started = self.active
            code = process.poll()
            if code is None:
                return burst.name
            self.finished.append(FinishedBurst(burst.name, burst.records, code, now - started))
            self.active = None
            if self._plan:
                self._next_at = now + self._plan[0].delay_s
        if self._plan and now >= self._next_at:
            burst = self._plan.pop(0)
            self.active = (burst, self._start(burst), now)
            return burst.name
        return "pause" if self._plan else "drain"

    @property
    def done(self) -> bool:
        """All bursts sent (or failed)."""
        return self.active is None and not self._plan

    @property
    def produced(self) -> int:
        """Records confirmed by producers that exited 0."""
        return sum(b.records for b in self.finished if b.exit_code == 0)

    @property
    def sending(self) -> int:
        """Records of finished or running bursts (what can be expected in the store)."""
        return self.produced + (self.active[0].records if self.active else 0)

    def stop(self) -> None:
        """Terminate a running producer."""
        self.group.stop_all()
