"""Timeline CSV round trip, summary and PNG plot (matplotlib Agg)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from creditstream.timeline import (
    TIMELINE_FIELDS,
    TimelineRow,
    TimelineWriter,
    depth_label,
    plot_timeline,
    read_timeline,
    summarize_timeline,
    timeline_figure,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def cycle() -> list[TimelineRow]:
    """Burst -> scale to 5 -> drain -> cooldown -> 0, with gaps where nothing was measured.

    The management-API depth lags the live ready count (stale until the next stats refresh).
    """
    shape = [
        (0, 0, 0, 0, None, 0),
        (1, 9000, 1, 0, None, 9500),
        (2, 8000, 5, 1, 900.0, 7000),
        (3, 2000, 5, 5, 4000.5, None),
        (4, 2000, 1, 5, 2000.0, 0),
        (5, 0, 1, 1, 0.0, 0),
        (6, 0, 0, 0, None, 0),
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
            ready_live=ready,
        )
        for t, depth, desired, running, rate, ready in shape
    ]


def test_csv_round_trip_keeps_unmeasured_cells_empty(tmp_path: Path) -> None:
    path = tmp_path / "timeline.csv"
    with TimelineWriter(path) as writer:
        for row in cycle():
            writer.write(row)
    text = path.read_text(encoding="utf-8").splitlines()
    assert text[0].split(",") == list(TIMELINE_FIELDS)
    assert text[1].split(",")[5] == ""  # records_per_s not measured: empty, not 0
    assert text[4].split(",")[-2:] == ["", ""]  # ready_live, publish_rate not measured
    assert read_timeline(path) == cycle()


def test_new_column_is_appended_so_older_readers_keep_their_positions() -> None:
    assert TIMELINE_FIELDS[:11] == (
        "t_s",
        "queue_depth",
        "depth_source",
        "desired_replicas",
        "running_replicas",
        "records_per_s",
        "p50_ms",
        "p99_ms",
        "dead_lettered",
        "scored_total",
        "phase",
    )
    assert TIMELINE_FIELDS[11:] == ("ready_live", "publish_rate")


def test_csv_without_the_live_ready_column_still_reads(tmp_path: Path) -> None:
    """A timeline written before `ready_live` existed (or by a tool that omits it)."""
    path = tmp_path / "old.csv"
    path.write_text(
        ",".join(TIMELINE_FIELDS[:11]) + "\n12.000,4500,management-api,5,4,,,,,,active\n",
        encoding="utf-8",
    )
    (row,) = read_timeline(path)
    assert (row.queue_depth, row.running_replicas, row.ready_live) == (4500, 4, None)
    assert row.phase == "active"


def test_read_timeline_rejects_other_csv(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a timeline CSV"):
        read_timeline(path)


def test_summary_of_a_full_cycle() -> None:
    stats = summarize_timeline(cycle())
    assert (stats.peak_depth, stats.peak_desired, stats.peak_running) == (9000, 5, 5)
    assert stats.peak_ready_live == 9500
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


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        pytest.param(["management-api"], "ready+unacked, management API", id="http"),
        pytest.param(["amqp-passive-declare"], "ready, AMQP passive declare", id="amqp"),
        pytest.param(["hpa-external-metric"], "HPA external metric", id="observe-without-api"),
        pytest.param(["", "other"], "queue depth (other)", id="unknown-source"),
        pytest.param(["", ""], "queue depth (source unknown)", id="no-source"),
    ],
)
def test_depth_label_says_what_the_trigger_metric_counts(sources: list[str], expected: str) -> None:
    assert depth_label(sources).startswith(expected)


def test_depth_label_lists_every_source_of_a_mixed_run() -> None:
    label = depth_label(["management-api", "amqp-passive-declare", "management-api"])
    assert label.count(" / ") == 1
    assert "ready+unacked" in label and "AMQP passive declare" in label


def _legend_texts(rows: list[TimelineRow]) -> list[str]:
    import matplotlib.pyplot as plt

    fig = timeline_figure(rows, title="test", subtitle="cycle")
    try:
        return [
            text.get_text()
            for ax in fig.axes
            if (legend := ax.get_legend()) is not None
            for text in legend.get_texts()
        ]
    finally:
        plt.close(fig)


def test_plot_writes_a_png_with_both_depths(tmp_path: Path) -> None:
    path = plot_timeline(cycle(), tmp_path / "timeline.png", title="test", subtitle="cycle")
    legends = _legend_texts(cycle())
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    assert any(text.startswith("ready (live, AMQP") for text in legends)
    assert any(text.startswith("ready+unacked, management API") for text in legends)
    assert "running" in legends


def test_plot_without_live_ready_draws_only_the_trigger_metric() -> None:
    rows = [replace(row, ready_live=None, depth_source="hpa-external-metric") for row in cycle()]
    legends = _legend_texts(rows)
    assert not any("live" in text for text in legends)
    assert any(text.startswith("HPA external metric") for text in legends)


def test_plot_refuses_empty_timeline(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        plot_timeline([], tmp_path / "x.png", title="empty")


def test_a_long_subtitle_stays_inside_the_figure() -> None:
    # NOTE: the demo's subtitle (records, rule, batch, peaks) ran past both edges of the PNG.
    import matplotlib.pyplot as plt

    subtitle = "data set, 2 x 15,000 records at 500/s; QueueLength value=2000, " * 4
    fig = timeline_figure(cycle(), title="test", subtitle=subtitle)
    try:
        fig.canvas.draw()
        suptitle = fig._suptitle
        assert suptitle is not None
        box = suptitle.get_window_extent()
        assert box.x0 >= 0 and box.x1 <= fig.bbox.x1, (box, fig.bbox)
    finally:
        plt.close(fig)
