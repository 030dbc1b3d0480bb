"""Which scenarios a benchmark run measures and how big each one is (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Store = Literal["sqlite", "postgresql"]

STORES: Final[tuple[Store, ...]] = ("sqlite", "postgresql")


@dataclass(frozen=True)
class ConsumerCase:
    """One creditstream consumer configuration: processes × store × records per message."""

    processes: int
    store: Store
    records_per_message: int
    records: int

    @property
    def key(self) -> str:
        """Stable identifier used in the JSON report and by the targets."""
        return f"creditstream-{self.processes}p-{self.store}-{self.records_per_message}rpm"

    @property
    def label(self) -> str:
        """Human label for tables."""
        unit = "record" if self.records_per_message == 1 else "records"
        return (
            f"creditstream, {self.processes} process{'es' if self.processes > 1 else ''}, "
            f"{self.store}, {self.records_per_message} {unit}/msg"
        )


@dataclass(frozen=True)
class BenchPlan:
    """Sizes and time bounds of one run; `quick` is the CI sanity mode."""

    quick: bool
    ceiling_messages: int
    seed_style_messages: int
    seed_style_max_s: float
    consumer_cases: tuple[ConsumerCase, ...]
    producer_records: dict[int, int]  # records per message → records to publish
    latency_rates: tuple[float, ...]
    latency_duration_s: float
    latency_warmup: int
    drain_timeout_s: float
    # NOTE: scenarios not started within this many seconds are skipped (and said so in the
    # report), which keeps `make bench` under 10 minutes even on a loaded machine.
    time_budget_s: float | None = None
    # NOTE: py-spy the consumer when a throughput target is missed (full mode only).
    profile: bool = False
    # NOTE: same prefetch and batch size for creditstream and the ceiling (Settings defaults).
    prefetch: int = 1024
    batch_size: int = 256
    # NOTE: staged vs fused pipeline (issue 11): data-set records through each path.
    pipeline_records: int = 2_000

    def profile_cases(self) -> list[tuple[ConsumerCase, int]]:
        """What to profile: one PostgreSQL consumer at 1 and at 100 records/message, and how
        many records (capped: the profiled drain is extra time)."""
        chosen = [c for c in self.consumer_cases if c.processes == 1 and c.store == "postgresql"]
        return [
            (c, min(c.records, 20_000 if c.records_per_message == 1 else 100_000)) for c in chosen
        ]

    @property
    def cold_start_case(self) -> ConsumerCase:
        """The 1-process, 1 record/message case whose consumer start-up and RSS are reported."""
        return next(
            c for c in self.consumer_cases if c.processes == 1 and c.records_per_message == 1
        )


def build_plan(*, quick: bool) -> BenchPlan:
    """The full plan (`make bench`, < 10 min) or the quick CI plan (< 2 min)."""
    if quick:
        cases: tuple[ConsumerCase, ...] = (
            ConsumerCase(1, "sqlite", 1, 3_000),
            ConsumerCase(1, "postgresql", 1, 3_000),
            ConsumerCase(2, "postgresql", 1, 3_000),
            ConsumerCase(1, "postgresql", 100, 10_000),
        )
        return BenchPlan(
            quick=True,
            ceiling_messages=3_000,
            seed_style_messages=200,
            seed_style_max_s=5.0,
            consumer_cases=cases,
            producer_records={1: 3_000, 100: 10_000},
            latency_rates=(500.0, 2_000.0),
            latency_duration_s=2.0,
            latency_warmup=50,
            drain_timeout_s=40.0,
        )
    cases = tuple(
        ConsumerCase(processes, store, rpm, 40_000 if rpm == 1 else 200_000)
        for rpm in (1, 100)
        for store in STORES
        for processes in (1, 2, 4)
    )
    return BenchPlan(
        quick=False,
        ceiling_messages=40_000,
        seed_style_messages=3_000,
        seed_style_max_s=20.0,
        consumer_cases=cases,
        producer_records={1: 40_000, 100: 200_000},
        latency_rates=(500.0, 2_000.0),
        latency_duration_s=10.0,
        latency_warmup=200,
        drain_timeout_s=45.0,
        time_budget_s=420.0,
        profile=True,
        pipeline_records=30_000,
    )
