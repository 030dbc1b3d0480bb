"""Benchmark arithmetic (pure): rates, latency percentiles, the open-loop send schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def rate(count: int, seconds: float) -> float:
    """Items per second; NaN when nothing was timed (never a made-up figure)."""
    if seconds <= 0 or count <= 0:
        return math.nan
    return count / seconds


def open_loop_schedule(start: float, rate_per_s: float, duration_s: float) -> np.ndarray:
    """Send times fixed in advance: `start + i / rate` for every i inside the duration.

    Latency is measured from these times, not from when the sender got round to sending, so a
    stalled system is charged for every request it delayed (no coordinated omission).
    """
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    n = max(1, round(rate_per_s * duration_s))
    return start + np.arange(n, dtype=np.float64) / rate_per_s


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles in milliseconds over the requests that got a reply."""

    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    def as_dict(self) -> dict[str, float | int]:
        """JSON shape."""
        return {
            "count": self.count,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "mean_ms": self.mean_ms,
        }


def summarize_latencies(seconds: Sequence[float] | np.ndarray) -> LatencySummary:
    """p50/p95/p99/max/mean (ms) of latencies given in seconds."""
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    if values.size == 0:
        nan = math.nan
        return LatencySummary(0, nan, nan, nan, nan, nan)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return LatencySummary(
        count=int(values.size),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        max_ms=float(values.max()),
        mean_ms=float(values.mean()),
    )


@dataclass(frozen=True)
class DrainTiming:
    """When a pre-filled queue started and finished draining (epoch seconds)."""

    first_receive: float
    last_durable: float
    records: int

    @property
    def seconds(self) -> float:
        """Drain duration."""
        return self.last_durable - self.first_receive

    @property
    def records_per_s(self) -> float:
        """Drain throughput."""
        return rate(self.records, self.seconds)
