"""Fixtures of the fault suite: workloads (synthetic for short runs, the data set for long ones)
and the exactly-once verdict every fault test ends with."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from creditstream.settings import Settings
from creditstream.synthetic import synthetic_id
from tests.helpers import PG_URL, data_path_or_skip, stored_rows


@dataclass(frozen=True)
class Workload:
    """What the producer sends and which record ids must come out, once each."""

    records: int
    real_data: bool

    def produce_args(self) -> list[str]:
        """`creditstream produce` arguments for this workload."""
        if self.real_data:
            return ["--data", str(data_path_or_skip()), "--limit", str(self.records)]
        return ["--synthetic", "--limit", str(self.records)]

    def expected_ids(self) -> set[str]:
        """Record ids as stored (strings): 1..N for the data set, syn-000001.. for synthetic."""
        if self.real_data:
            return {str(i) for i in range(1, self.records + 1)}
        return {synthetic_id(i) for i in range(1, self.records + 1)}


@dataclass(frozen=True)
class Verdict:
    """How the stored predictions compare with the records sent."""

    stored: int
    lost: int
    duplicated: int
    unexpected: int


def verdict(settings: Settings, workload: Workload) -> Verdict:
    """Count stored rows, missing records, records stored more than once, and strangers."""
    record_ids = [record_id for _, record_id, _ in stored_rows(settings)]
    counts = Counter(record_ids)
    expected = workload.expected_ids()
    return Verdict(
        stored=len(record_ids),
        lost=len(expected - counts.keys()),
        duplicated=sum(n - 1 for n in counts.values() if n > 1),
        unexpected=len(counts.keys() - expected),
    )


@pytest.fixture
def pg_settings(make_settings: Callable[..., Settings], pg_schema: str) -> Callable[..., Settings]:
    """Settings writing to the test's own PostgreSQL schema."""

    def build(**overrides: object) -> Settings:
        return make_settings(database_url=PG_URL, database_schema=pg_schema, **overrides)

    return build
