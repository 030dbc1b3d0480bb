"""The timeline of a scaling run: one CSV format and one PNG plot for the demo and for observe.

A row is one sample: queue depth (and where it was read), desired and running replicas,
throughput, latency, dead-lettered records, a free-form phase label, the live ready count and
the publish rate the MessageRate trigger reads.
Empty cells mean "not measured" (e.g. latency from a cluster), never zero.

Two depths, on purpose: `queue_depth` is the trigger metric KEDA reads (over `http` the
management API's ready + unacked, which RabbitMQ refreshes only every
`collect_statistics_interval`, 5 s by default), `ready_live` is the ready count of an AMQP
passive declare taken at the same moment (exact, but blind to unacked messages). The plot draws
both, so the lag of what the autoscaler sees is visible instead of being mistaken for a backlog.
"""

from __future__ import annotations

import csv
import math
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class TimelineRow:
    """One sample of a scaling run."""

    t_s: float
    queue_depth: int | None
    depth_source: str
    desired_replicas: int | None
    running_replicas: int | None
    records_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    dead_lettered: int | None = None
    scored_total: int | None = None
    phase: str = ""
    ready_live: int | None = None
    publish_rate: float | None = None


TIMELINE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TimelineRow))
_INT_FIELDS = {
    "queue_depth",
    "desired_replicas",
    "running_replicas",
    "dead_lettered",
    "scored_total",
    "ready_live",
}
_FLOAT_FIELDS = {"t_s", "records_per_s", "p50_ms", "p99_ms", "publish_rate"}
SUBTITLE_WIDTH = 110  # characters per subtitle line of the 10-inch timeline figure


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


class TimelineWriter:
    """Appends rows to a CSV file, flushed per row so a crash keeps what was seen."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle: IO[str] = path.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._handle)
        self._writer.writerow(TIMELINE_FIELDS)
        self.rows: list[TimelineRow] = []

    def write(self, row: TimelineRow) -> None:
        """Append one row."""
        self._writer.writerow([_cell(value) for value in asdict(row).values()])
        self._handle.flush()
        self.rows.append(row)

    def close(self) -> None:
        """Close the file."""
        self._handle.close()

    def __enter__(self) -> TimelineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse(name: str, text: str) -> Any:
    if name in _INT_FIELDS:
        return int(text) if text else None
    if name in _FLOAT_FIELDS:
        return float(text) if text else None
    return text


def read_timeline(path: Path) -> list[TimelineRow]:
    """Rows of a timeline CSV (columns in any order; unknown columns are ignored)."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"t_s", "queue_depth", "desired_replicas", "running_replicas"} - set(
            reader.fieldnames or ()
        )
        if missing:
            raise ValueError(f"{path}: not a timeline CSV, missing columns {sorted(missing)}")
        return [
            TimelineRow(**{name: _parse(name, raw.get(name) or "") for name in TIMELINE_FIELDS})
            for raw in reader
        ]


@dataclass(frozen=True)
class TimelineStats:
    """What a timeline shows at a glance (used by summaries and tests)."""

    duration_s: float
    peak_depth: int
    peak_desired: int
    peak_running: int
    final_running: int | None
    scaled_above_one: bool
    returned_to_zero: bool
    peak_ready_live: int | None = None


def summarize_timeline(rows: Sequence[TimelineRow]) -> TimelineStats:
    """Peaks and the end state of a timeline."""
    if not rows:
        return TimelineStats(0.0, 0, 0, 0, None, False, False)
    running = [r.running_replicas for r in rows if r.running_replicas is not None]
    peak_running = max(running, default=0)
    peak_index = next((i for i, r in enumerate(rows) if r.running_replicas == peak_running), 0)
    after_peak = [r.running_replicas for r in rows[peak_index:] if r.running_replicas is not None]
    return TimelineStats(
        duration_s=rows[-1].t_s - rows[0].t_s,
        peak_depth=max((r.queue_depth for r in rows if r.queue_depth is not None), default=0),
        peak_desired=max((r.desired_replicas or 0 for r in rows), default=0),
        peak_running=peak_running,
        final_running=running[-1] if running else None,
        scaled_above_one=peak_running > 1,
        returned_to_zero=peak_running > 0 and bool(after_peak) and after_peak[-1] == 0,
        peak_ready_live=max((r.ready_live for r in rows if r.ready_live is not None), default=None),
    )


def _series(rows: Iterable[TimelineRow], name: str) -> list[float]:
    return [math.nan if getattr(r, name) is None else float(getattr(r, name)) for r in rows]


# NOTE: what each source counts, in the words of KEDA's RabbitMQ scaler (`protocol`).
DEPTH_SOURCE_LABELS: dict[str, str] = {
    "management-api": "ready+unacked, management API (what KEDA http sees; refreshed every ~5 s)",
    "amqp-passive-declare": "ready, AMQP passive declare (what KEDA amqp sees)",
    "hpa-external-metric": "HPA external metric (what KEDA reported)",
}


def depth_label(sources: Iterable[str]) -> str:
    """Legend text of the trigger-metric line for the sources seen in a timeline."""
    names = sorted({source for source in sources if source})
    if not names:
        return "queue depth (source unknown)"
    return " / ".join(DEPTH_SOURCE_LABELS.get(name, f"queue depth ({name})") for name in names)


def _phase_spans(rows: Sequence[TimelineRow]) -> list[tuple[str, float, float]]:
    spans: list[tuple[str, float, float]] = []
    for row in rows:
        if spans and spans[-1][0] == row.phase:
            spans[-1] = (row.phase, spans[-1][1], row.t_s)
        else:
            spans.append((row.phase, row.t_s, row.t_s))
    return [span for span in spans if span[0]]


def plot_timeline(
    rows: Sequence[TimelineRow], path: Path, *, title: str, subtitle: str = ""
) -> Path:
    """Write the timeline figure as a PNG."""
    import matplotlib.pyplot as plt

    fig = timeline_figure(rows, title=title, subtitle=subtitle)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timeline_figure(rows: Sequence[TimelineRow], *, title: str, subtitle: str = "") -> Figure:
    """Depths and records/s (second axis) above, desired vs running replicas below.

    The live ready count is a filled area, the trigger metric a step line: it holds each
    management-API reading until the broker refreshes its statistics.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("cannot plot an empty timeline")
    t = [r.t_s for r in rows]
    fig, (ax_depth, ax_replicas) = plt.subplots(
        2, 1, sharex=True, figsize=(10, 6.5), height_ratios=(3, 2), constrained_layout=True
    )
    if any(r.ready_live is not None for r in rows):
        ax_depth.fill_between(
            t,
            _series(rows, "ready_live"),
            step="post",
            alpha=0.35,
            color="tab:blue",
            lw=0,
            label="ready (live, AMQP passive declare every sample)",
        )
    ax_depth.step(
        t,
        _series(rows, "queue_depth"),
        where="post",
        color="midnightblue",
        lw=1.6,
        label=depth_label(r.depth_source for r in rows),
    )
    ax_depth.set_ylabel("messages in queue")
    ax_depth.set_ylim(bottom=0)
    ax_rate = ax_depth.twinx()
    ax_rate.plot(
        t, _series(rows, "records_per_s"), color="tab:green", lw=1.2, label="records scored / s"
    )
    if any(r.publish_rate is not None for r in rows):
        ax_rate.step(
            t,
            _series(rows, "publish_rate"),
            where="post",
            color="tab:purple",
            lw=1.2,
            ls=":",
            label="publish rate / s, management API (what the MessageRate trigger reads)",
        )
    ax_rate.set_ylabel("records / s")
    ax_rate.set_ylim(bottom=0)
    handles = ax_depth.get_legend_handles_labels()[0] + ax_rate.get_legend_handles_labels()[0]
    # NOTE: above the axes, so it never hides a burst whatever the load profile.
    ax_depth.legend(
        handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=8, frameon=False
    )

    ax_replicas.step(
        t,
        _series(rows, "desired_replicas"),
        where="post",
        color="tab:orange",
        lw=1.8,
        label="desired (KEDA + HPA rule)",
    )
    ax_replicas.step(
        t,
        _series(rows, "running_replicas"),
        where="post",
        color="tab:red",
        lw=1.2,
        ls="--",
        label="running",
    )
    ax_replicas.set_ylabel("consumer replicas")
    ax_replicas.set_xlabel("seconds since start")
    peak = max(
        (v for r in rows for v in (r.desired_replicas, r.running_replicas) if v is not None),
        default=0,
    )
    ax_replicas.set_ylim(0, peak * 1.25 + 1)  # headroom for the legend
    ax_replicas.yaxis.get_major_locator().set_params(integer=True)
    ax_replicas.legend(loc="upper left", fontsize=8, ncol=2, frameon=False)
    for ax in (ax_depth, ax_replicas):
        ax.grid(alpha=0.3)
    for phase, start, end in _phase_spans(rows):
        if "burst" in phase:
            for ax in (ax_depth, ax_replicas):
                ax.axvspan(start, end, color="0.85", alpha=0.5, lw=0)
            ax_depth.annotate(
                phase,
                xy=(start, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -12),
                textcoords="offset points",
                fontsize=8,
                color="0.3",
            )
    # NOTE: 10 in at 10 pt hold ~130 characters a line; longer subtitles ran past both edges.
    wrapped = textwrap.fill(subtitle, width=SUBTITLE_WIDTH) if subtitle else ""
    fig.suptitle(title + (f"\n{wrapped}" if wrapped else ""), fontsize=10)
    return fig
