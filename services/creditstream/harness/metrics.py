"""Prometheus metrics of local processes: one parser (prometheus_client's), histogram maths.

A scrape is parsed once into `Metrics`; counters are read by name and labels, histograms are
summed over processes (a process that has exited keeps its last scrape), windows are
differences of two sums, and quantiles interpolate linearly inside a bucket as PromQL's
histogram_quantile does.
"""

from __future__ import annotations

import http.client
import math
import re
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

# `name` or `name{label="value",...}`: how tests and reports name one series.
_SELECTOR: Final = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?$")
_SELECTOR_LABEL: Final = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# NOTE: the whole label list must parse; a label left unread would widen the selection to
# every series of the name (`{outcome=scored}` summing every outcome) instead of failing.
_SELECTOR_LABELS: Final = re.compile(rf"(?:{_SELECTOR_LABEL.pattern}(?:,(?=\w)|,?$))*")


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


@dataclass(frozen=True)
class Metrics:
    """One scrape: every sample as (name, labels, value)."""

    samples: tuple[tuple[str, Mapping[str, str], float], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Metrics:
        """A Prometheus text exposition (raises ValueError when it is malformed)."""
        return cls(
            tuple(
                (sample.name, sample.labels, float(sample.value))
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            )
        )

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 when absent)."""
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )

    def __getitem__(self, selector: str) -> float:
        """`m['name{label="value"}']`: value() of a series written as in PromQL (0 when absent)."""
        name, labels = _parse_selector(selector)
        return self.value(name, **labels)

    def get(self, selector: str) -> float | None:
        """Like `m[selector]`, but None when no series matches: absent is not zero."""
        name, labels = _parse_selector(selector)
        found = [
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        ]
        return sum(found) if found else None

    def histogram(self, name: str) -> Histogram:
        """The histogram `name` (unlabelled, or summed over its labels)."""
        buckets: dict[float, float] = {}
        for sample, labels, value in self.samples:
            if sample == f"{name}_bucket":
                le = float(labels["le"])  # NOTE: float("+Inf") is inf
                buckets[le] = buckets.get(le, 0.0) + value
        if not buckets:
            return Histogram.empty()
        return Histogram(
            tuple(sorted(buckets.items())), self.value(f"{name}_sum"), self.value(f"{name}_count")
        )


def _parse_selector(selector: str) -> tuple[str, dict[str, str]]:
    """(name, labels) of `name{label="value",...}`; KeyError when it does not parse whole."""
    match = _SELECTOR.match(selector)
    if match is None or not _SELECTOR_LABELS.fullmatch(match["labels"] or ""):
        raise KeyError(selector)
    return match["name"], dict(_SELECTOR_LABEL.findall(match["labels"] or ""))


def scrape(url: str, timeout_s: float = 2.0) -> Metrics | None:
    """GET a /metrics endpoint; None when it does not answer (or answers half a page)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return Metrics.parse(response.read().decode("utf-8"))
    # NOTE: a process killed while writing its page gives IncompleteRead, something else on
    # the port BadStatusLine: http.client.HTTPException, which is no OSError.
    except (OSError, ValueError, http.client.HTTPException):
        return None


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
