"""The benchmark plans: every scenario of issue 5 in the full plan, a small quick plan."""

from __future__ import annotations

import pytest

from creditstream.bench.plan import build_plan

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def test_full_plan_covers_the_whole_matrix() -> None:
    plan = build_plan(quick=False)
    matrix = {(c.processes, c.store, c.records_per_message) for c in plan.consumer_cases}
    assert matrix == {
        (p, s, k) for p in (1, 2, 4) for s in ("sqlite", "postgresql") for k in (1, 100)
    }
    assert set(plan.producer_records) == {1, 100}
    assert 500.0 in plan.latency_rates and 2000.0 in plan.latency_rates
    assert plan.time_budget_s is not None and plan.time_budget_s < 600
    assert len({c.key for c in plan.consumer_cases}) == len(plan.consumer_cases)


def test_quick_plan_is_smaller_and_never_skips() -> None:
    quick, full = build_plan(quick=True), build_plan(quick=False)
    assert quick.time_budget_s is None
    assert max(c.records for c in quick.consumer_cases) < min(
        c.records for c in full.consumer_cases if c.records_per_message == 100
    )
    assert quick.latency_duration_s < full.latency_duration_s
    assert {c.store for c in quick.consumer_cases} == {"sqlite", "postgresql"}
    assert {c.records_per_message for c in quick.consumer_cases} == {1, 100}


@pytest.mark.parametrize("quick", [pytest.param(True, id="quick"), pytest.param(False, id="full")])
def test_cold_start_case_is_one_process_one_record(quick: bool) -> None:
    case = build_plan(quick=quick).cold_start_case
    assert (case.processes, case.records_per_message) == (1, 1)


def test_case_key_and_label() -> None:
    case = build_plan(quick=False).consumer_cases[0]
    assert case.key == f"creditstream-{case.processes}p-{case.store}-{case.records_per_message}rpm"
    assert case.store in case.label
