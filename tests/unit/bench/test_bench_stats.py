"""Benchmark arithmetic: rates, the open-loop schedule, latency percentiles, drain timing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from creditstream.bench.stats import DrainTiming, open_loop_schedule, rate, summarize_latencies

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


@pytest.mark.parametrize(
    ("count", "seconds", "expected"),
    [
        pytest.param(1000, 2.0, 500.0, id="plain"),
        pytest.param(0, 2.0, math.nan, id="nothing-counted"),
        pytest.param(10, 0.0, math.nan, id="no-time"),
        pytest.param(10, -1.0, math.nan, id="negative-time"),
    ],
)
def test_rate(count: int, seconds: float, expected: float) -> None:
    got = rate(count, seconds)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_open_loop_schedule_is_fixed_in_advance_at_the_offered_rate() -> None:
    schedule = open_loop_schedule(100.0, 2000.0, 1.5)
    assert len(schedule) == 3000
    assert schedule[0] == 100.0
    np.testing.assert_allclose(np.diff(schedule), 1 / 2000.0)
    assert schedule[-1] < 101.5


@pytest.mark.parametrize(
    ("rate_per_s", "duration_s"),
    [pytest.param(0.0, 1.0, id="zero-rate"), pytest.param(10.0, 0.0, id="zero-duration")],
)
def test_open_loop_schedule_rejects_nonsense(rate_per_s: float, duration_s: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        open_loop_schedule(0.0, rate_per_s, duration_s)


def test_latency_summary_in_milliseconds() -> None:
    seconds = np.arange(1, 101) / 1000.0  # 1 .. 100 ms
    summary = summarize_latencies(seconds)
    assert summary.count == 100
    assert summary.p50_ms == pytest.approx(50.5)
    assert summary.p95_ms == pytest.approx(95.05)
    assert summary.p99_ms == pytest.approx(99.01)
    assert summary.max_ms == pytest.approx(100.0)
    assert summary.mean_ms == pytest.approx(50.5)
    assert summary.p50_ms <= summary.p95_ms <= summary.p99_ms <= summary.max_ms


def test_latency_summary_of_nothing_is_nan_not_zero() -> None:
    summary = summarize_latencies([])
    assert summary.count == 0
    assert math.isnan(summary.p50_ms) and math.isnan(summary.max_ms)


def test_drain_timing() -> None:
    timing = DrainTiming(first_receive=10.0, last_durable=14.0, records=20_000)
    assert timing.seconds == 4.0
    assert timing.records_per_s == 5_000.0
