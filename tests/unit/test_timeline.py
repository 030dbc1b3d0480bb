"""Timeline CSV round trip, summary and PNG plot (matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import pytest

from creditstream.timeline import (
    TIMELINE_FIELDS,
    TimelineRow,
    TimelineWriter,
    plot_timeline,
    read_timeline,
    summarize_timeline,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def cycle() -> list[TimelineRow]:
    """Burst -> scale to 5 -> drain -> cooldown -> 0, with gaps where nothing was measured."""
    shape = [
        (0, 0, 0, 0, None),
        (1, 9000, 1, 0, None),
        (2, 8000, 5, 1, 900.0),
        (3, 2000, 5, 5, 4000.5),
        (4, 0, 1, 5, 2000.0),
        (5, 0, 1, 1, 0.0),
        (6, 0, 0, 0, None),
    ]
    return [
        TimelineRow(
            t_s=float(t),
            queue_depth=depth,
            depth_source="management-api",
            desired_replicas=desired,
            running_replicas=running,
            records_per_s=rate,
            p50_ms=None if rate is None else 3.25,
            p99_ms=None,
            dead_lettered=0,
            scored_total=t * 1000,
            phase="burst 1" if t < 3 else "",
        )
        for t, depth, desired, running, rate in shape
    ]


def test_csv_round_trip_keeps_unmeasured_cells_empty(tmp_path: Path) -> None:
    path = tmp_path / "timeline.csv"
    with TimelineWriter(path) as writer:
        for row in cycle():
            writer.write(row)
    text = path.read_text(encoding="utf-8").splitlines()
    assert text[0].split(",") == list(TIMELINE_FIELDS)
    assert text[1].split(",")[5] == ""  # records_per_s not measured: empty, not 0
    assert read_timeline(path) == cycle()


def test_read_timeline_rejects_other_csv(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a timeline CSV"):
        read_timeline(path)


def test_summary_of_a_full_cycle() -> None:
    stats = summarize_timeline(cycle())
    assert (stats.peak_depth, stats.peak_desired, stats.peak_running) == (9000, 5, 5)
    assert stats.scaled_above_one and stats.returned_to_zero
    assert stats.duration_s == 6.0


@pytest.mark.parametrize(
    ("running", "above_one", "back_to_zero"),
    [
        pytest.param([0, 1, 1], False, False, id="one-replica-never-down"),
        pytest.param([0, 1, 0], False, True, id="one-replica-then-zero"),
        pytest.param([0, 3, 2], True, False, id="scaled-not-drained"),
        pytest.param([0, 0, 0], False, False, id="never-scaled"),
    ],
)
def test_summary_flags(running: list[int], above_one: bool, back_to_zero: bool) -> None:
    rows = [TimelineRow(float(i), 0, "", r, r) for i, r in enumerate(running)]
    stats = summarize_timeline(rows)
    assert (stats.scaled_above_one, stats.returned_to_zero) == (above_one, back_to_zero)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = plot_timeline(cycle(), tmp_path / "timeline.png", title="test", subtitle="cycle")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_plot_refuses_empty_timeline(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        plot_timeline([], tmp_path / "x.png", title="empty")
