"""Latency percentiles from the consumers' Prometheus histograms, summed over processes.

Pure maths on the text exposition format: cumulative buckets per process are summed (a
process that has exited keeps its last scrape), windows are differences of two sums, and
quantiles interpolate linearly inside a bucket as PromQL's histogram_quantile does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)"
)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts keyed by upper bound (+Inf included), with sum and count."""

    buckets: tuple[tuple[float, float], ...]
    total: float
    count: float

    @staticmethod
    def empty() -> Histogram:
        """No observations."""
        return Histogram((), 0.0, 0.0)

    def __add__(self, other: Histogram) -> Histogram:
        if not self.buckets:
            return other
        if not other.buckets:
            return self
        mine, theirs = dict(self.buckets), dict(other.buckets)
        if mine.keys() != theirs.keys():
            raise ValueError("cannot add histograms with different buckets")
        return Histogram(
            tuple((le, mine[le] + theirs[le]) for le in sorted(mine)),
            self.total + other.total,
            self.count + other.count,
        )

    def __sub__(self, other: Histogram) -> Histogram:
        if not other.buckets:
            return self
        theirs = dict(other.buckets)
        return Histogram(
            tuple((le, c - theirs.get(le, 0.0)) for le, c in self.buckets),
            self.total - other.total,
            self.count - other.count,
        )

    def quantile(self, q: float) -> float | None:
        """histogram_quantile(q): None without observations; the last finite bound if in +Inf."""
        if not 0 <= q <= 1:
            raise ValueError("q must be in [0, 1]")
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank and cumulative > lower_count:
                if math.isinf(le):
                    return lower_bound
                return lower_bound + (le - lower_bound) * (rank - lower_count) / (
                    cumulative - lower_count
                )
            lower_bound, lower_count = (0.0 if math.isinf(le) else le), cumulative
        return lower_bound


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample line of a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match.group("labels") or ""))
        samples.append((match.group("name"), labels, float(match.group("value"))))
    return samples


def histogram_from_text(text: str, name: str) -> Histogram:
    """The histogram `name` (unlabelled, or summed over its labels) from an exposition."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for sample, labels, value in parse_samples(text):
        if sample == f"{name}_bucket":
            le = math.inf if labels["le"] in {"+Inf", "Inf"} else float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + value
        elif sample == f"{name}_sum":
            total += value
        elif sample == f"{name}_count":
            count += value
    if not buckets:
        return Histogram.empty()
    return Histogram(tuple(sorted(buckets.items())), total, count)


def counter_from_text(text: str, name: str, **match: str) -> float:
    """Sum of a counter's samples whose labels include `match` (`_total` suffix included)."""
    return sum(
        value
        for sample, labels, value in parse_samples(text)
        if sample == name and all(labels.get(k) == v for k, v in match.items())
    )


def sum_histograms(histograms: Iterable[Histogram]) -> Histogram:
    """One histogram of many processes."""
    result = Histogram.empty()
    for histogram in histograms:
        result = result + histogram
    return result


class HistogramAggregator:
    """Latest histogram per process; exited processes keep their last scrape in the total."""

    def __init__(self) -> None:
        self._latest: dict[int, Histogram] = {}

    def update(self, process: int, histogram: Histogram) -> None:
        """Record the latest scrape of one process."""
        if histogram.buckets:
            self._latest[process] = histogram

    def total(self) -> Histogram:
        """The sum over every process seen."""
        return sum_histograms(self._latest.values())

    @property
    def processes(self) -> Mapping[int, Histogram]:
        """Latest histogram by process index."""
        return dict(self._latest)
