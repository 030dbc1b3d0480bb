"""Report maths: ratios, target checks, sanity checks and the Markdown/rich rendering."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest

from creditstream.bench.report import (
    case_key,
    evaluate_targets,
    print_tables,
    ratios,
    render_markdown,
    sanity_problems,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def _throughput(kind: str, records_per_s: float, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "label": extra.pop("label", kind),
        "records": 1000,
        "messages": 1000,
        "seconds": 1000 / records_per_s,
        "records_per_s": records_per_s,
        "messages_per_s": records_per_s,
        "error": None,
        **extra,
    }


def _cs(processes: int, store: str, rpm: int, records_per_s: float) -> dict[str, Any]:
    return _throughput(
        "creditstream",
        records_per_s,
        label=f"cs {processes} {store} {rpm}",
        processes=processes,
        store=store,
        records_per_message=rpm,
        cold_start_s=1.2,
        peak_rss_mb=110.0,
    )


@pytest.fixture
def report() -> dict[str, Any]:
    """A coherent report of invented figures (test data, not measurements)."""
    return {
        "quick": False,
        "started_at": "2026-11-28T00:00:00+00:00",
        "duration_s": 300.0,
        "machine": {"cores": 2, "cpu_model": "Test CPU", "memory_gb": 8, "kernel": "6.1"},
        "versions": {"python": "3.11", "rabbitmq": "3.10.8"},
        "load_before": [0.1, 0.1, 0.1],
        "load_after": [0.5, 0.2, 0.1],
        "throughput": {
            "ceiling": _throughput("ceiling", 20_000.0),
            "seed-style": _throughput("seed-style", 800.0),
            case_key(1, "sqlite", 1): _cs(1, "sqlite", 1, 12_000.0),
            case_key(1, "postgresql", 1): _cs(1, "postgresql", 1, 8_000.0),
            case_key(2, "postgresql", 1): _cs(2, "postgresql", 1, 12_000.0),
            case_key(1, "postgresql", 100): _cs(1, "postgresql", 100, 60_000.0),
        },
        "producer": {"producer-1rpm": _throughput("producer", 16_000.0)},
        "latency": [
            {
                "offered_per_s": 500.0,
                "sent": 100,
                "replied": 100,
                "errors": 0,
                "p50_ms": 2.0,
                "p95_ms": 3.0,
                "p99_ms": 4.0,
                "max_ms": 9.0,
            },
            {
                "offered_per_s": 2000.0,
                "sent": 400,
                "replied": 400,
                "errors": 0,
                "p50_ms": 4.0,
                "p95_ms": 12.0,
                "p99_ms": 25.0,
                "max_ms": 40.0,
            },
        ],
        "startup": {"cold_start_s": 1.5, "peak_rss_mb": 120.0},
        "method": ["pre-filled queues"],
        "notes": [],
    }


def test_ratios_divide_figures_of_the_same_run(report: dict[str, Any]) -> None:
    found = {r.name: r.value for r in ratios(report)}
    assert found["creditstream (sqlite) / ceiling"] == pytest.approx(0.6)
    assert found["creditstream (postgresql) / ceiling"] == pytest.approx(0.4)
    assert found["creditstream (sqlite) / seed-style"] == pytest.approx(15.0)
    assert found["creditstream (postgresql) / seed-style"] == pytest.approx(10.0)
    assert found["creditstream (postgresql, 100 rec/msg) / ceiling"] == pytest.approx(3.0)
    assert found["2 processes / 1 process (postgresql, 1 rec/msg)"] == pytest.approx(1.5)
    # Scenarios that were not run produce no ratio rows.
    assert "4 processes / 1 process (sqlite, 1 rec/msg)" not in found


def test_ratio_with_a_failed_side_is_reported_as_unknown(report: dict[str, Any]) -> None:
    report["throughput"]["ceiling"]["error"] = "broker went away"
    found = {r.name: r.value for r in ratios(report)}
    assert found["creditstream (sqlite) / ceiling"] is None


@pytest.mark.parametrize(
    ("name", "met"),
    [
        pytest.param("1 consumer, 1 rec/msg, sqlite", True, id="sqlite-10k-met"),
        pytest.param("1 consumer, 1 rec/msg, postgresql", False, id="pg-10k-missed"),
        pytest.param("1 consumer, 1 rec/msg, sqlite vs ceiling", True, id="ceiling-0.6"),
        pytest.param("1 consumer, 1 rec/msg, postgresql vs ceiling", False, id="ceiling-0.4"),
        pytest.param("1 consumer, 1 rec/msg, postgresql vs seed-style", True, id="seed-10x"),
        pytest.param("1 consumer, 100 rec/msg, postgresql", False, id="100rpm-60k"),
        pytest.param("1 consumer, 100 rec/msg, sqlite", None, id="100rpm-not-run"),
        pytest.param("producer with confirms, 1 rec/msg", True, id="producer"),
        pytest.param("p50 at 2,000 rec/s offered", True, id="p50"),
        pytest.param("p99 at 2,000 rec/s offered", False, id="p99"),
        pytest.param("consumer cold start (process start -> /readyz 200)", True, id="cold"),
        pytest.param("consumer peak RSS", True, id="rss"),
    ],
)
def test_targets(report: dict[str, Any], name: str, met: bool | None) -> None:
    checks = {c.name: c for c in evaluate_targets(report)}
    assert checks[name].met is met
    assert (checks[name].measured is None) == (met is None)


def test_a_sane_report_has_no_problems(report: dict[str, Any]) -> None:
    assert sanity_problems(report) == []


def _break(report: dict[str, Any], how: str) -> None:
    throughput = report["throughput"]
    if how == "error":
        throughput["ceiling"]["error"] = "drained 10 of 1000"
    elif how == "nan-rate":
        throughput[case_key(1, "sqlite", 1)]["records_per_s"] = float("nan")
    elif how == "zero-seconds":
        report["producer"]["producer-1rpm"]["seconds"] = 0.0
    elif how == "faster-than-noop":
        throughput[case_key(1, "sqlite", 1)]["records_per_s"] = 100_000.0
    elif how == "lost-replies":
        report["latency"][1]["replied"] = 399
    elif how == "percentiles-out-of-order":
        report["latency"][0]["p50_ms"] = 10.0
    elif how == "latency-error":
        report["latency"][0] = {"offered_per_s": 500.0, "error": "consumer never ready"}
    elif how == "no-cold-start":
        report["startup"] = {}
    elif how == "absurd-rss":
        report["startup"]["peak_rss_mb"] = 10_000.0


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("error", id="scenario-error"),
        pytest.param("nan-rate", id="nan-rate"),
        pytest.param("zero-seconds", id="zero-seconds"),
        pytest.param("faster-than-noop", id="faster-than-the-noop-ceiling"),
        pytest.param("lost-replies", id="lost-replies"),
        pytest.param("percentiles-out-of-order", id="percentiles-out-of-order"),
        pytest.param("latency-error", id="latency-error"),
        pytest.param("no-cold-start", id="no-cold-start"),
        pytest.param("absurd-rss", id="absurd-rss"),
    ],
)
def test_sanity_catches_breakage(report: dict[str, Any], how: str) -> None:
    broken = copy.deepcopy(report)
    _break(broken, how)
    assert sanity_problems(broken), how


def test_missed_targets_and_skips_are_not_sanity_problems(report: dict[str, Any]) -> None:
    report["throughput"]["seed-style"] = {"kind": "seed-style", "skipped": "no data set"}
    report["throughput"][case_key(1, "postgresql", 100)]["records_per_s"] = 1.0
    report["latency"][1] = {"offered_per_s": 2000.0, "skipped": "time budget used up"}
    assert sanity_problems(report) == []
    assert any(c.met is False for c in evaluate_targets(report))


def test_multi_process_rate_is_judged_per_process(report: dict[str, Any]) -> None:
    # 4 processes at 2.5 x the single-process no-op ceiling in total is plausible.
    entry = _cs(4, "postgresql", 1, 50_000.0)
    report["throughput"][case_key(4, "postgresql", 1)] = entry
    assert sanity_problems(report) == []


def test_markdown_lists_every_figure_ratio_and_target(report: dict[str, Any]) -> None:
    text = render_markdown(report, reproduce="make bench")
    for entry in report["throughput"].values():
        assert entry["label"] in text
        assert f"{entry['records_per_s']:,.0f}" in text
    for r in ratios(report):
        assert r.name in text
    for c in evaluate_targets(report):
        assert c.name in text
    assert "**missed**" in text and "| met |" in text
    assert "Test CPU" in text and "rabbitmq 3.10.8" in text
    assert "[0.1, 0.1, 0.1]" in text
    assert "make bench" in text
    assert "no errors" in text


def test_markdown_shows_problems(report: dict[str, Any]) -> None:
    report["throughput"]["ceiling"]["error"] = "drained 10 of 1000"
    assert "PROBLEM: ceiling: drained 10 of 1000" in render_markdown(report, reproduce="")


def test_rich_tables_print(report: dict[str, Any]) -> None:
    from rich.console import Console

    buffer = io.StringIO()
    print_tables(report, Console(file=buffer, width=200))
    out = buffer.getvalue()
    assert "throughput" in out and "targets" in out and "missed" in out
