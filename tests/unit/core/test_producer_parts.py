"""Producer's pure parts: message grouping with stable ids, pacing, the summary line."""

from __future__ import annotations

import json

import pytest

from creditstream.producer import Pacer, ProduceReport, build_messages, dataset_records

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("n_records", "per_message", "sizes"),
    [
        pytest.param(5, 1, [1, 1, 1, 1, 1], id="one-per-message"),
        pytest.param(5, 2, [2, 2, 1], id="remainder"),
        pytest.param(0, 3, [], id="empty"),
    ],
)
def test_build_messages_groups_and_numbers(
    n_records: int, per_message: int, sizes: list[int]
) -> None:
    records = [{"ID": i} for i in range(n_records)]
    messages = list(build_messages(records, per_message, "run1"))
    assert [m.n_records for m in messages] == sizes
    assert [m.message_id for m in messages] == [f"run1-{i:09d}" for i in range(1, len(sizes) + 1)]
    if sizes and per_message == 1:
        assert json.loads(messages[0].body) == {"ID": 0}
    if sizes and per_message > 1:
        assert json.loads(messages[0].body) == [{"ID": 0}, {"ID": 1}]


def test_same_run_id_gives_same_ids_so_a_rerun_deduplicates() -> None:
    first = [m.message_id for m in build_messages([{"ID": i} for i in range(3)], 1, "job-a")]
    again = [m.message_id for m in build_messages([{"ID": i} for i in range(3)], 1, "job-a")]
    assert first == again


@pytest.mark.parametrize(
    ("pacer", "records_sent", "messages_sent", "now", "expected"),
    [
        pytest.param(Pacer(), 100, 100, 10.0, 0.0, id="unpaced"),
        pytest.param(Pacer(rate=100, started=0.0), 100, 100, 0.5, 0.5, id="rate-ahead"),
        pytest.param(Pacer(rate=100, started=0.0), 100, 100, 2.0, 0.0, id="rate-behind"),
        pytest.param(Pacer(interval=0.25, started=0.0), 40, 4, 0.5, 0.5, id="interval"),
    ],
)
def test_pacer(
    pacer: Pacer, records_sent: int, messages_sent: int, now: float, expected: float
) -> None:
    assert pacer.delay(now, records_sent, messages_sent) == pytest.approx(expected)


def test_summary_line_flags_unconfirmed() -> None:
    report = ProduceReport(source="x", records=10, messages=10, seconds=2.0, source_finished=True)
    assert "5 records/s" in report.summary_line()
    report.unconfirmed = 3
    assert "NOT CONFIRMED: 3 records" in report.summary_line()


@pytest.mark.parametrize(
    ("finished", "unconfirmed", "stopped", "complete", "says"),
    [
        pytest.param(True, 0, None, True, None, id="complete"),
        pytest.param(True, 2, None, False, "NOT CONFIRMED: 2", id="unconfirmed"),
        pytest.param(False, 0, "SIGTERM", False, "STOPPED (SIGTERM)", id="stopped"),
        pytest.param(False, 0, "broker unreachable", False, "broker unreachable", id="gave-up"),
    ],
)
def test_report_is_complete_only_when_the_source_ended_and_all_confirmed(
    finished: bool, unconfirmed: int, stopped: str | None, complete: bool, says: str | None
) -> None:
    report = ProduceReport(
        source="x", records=5, unconfirmed=unconfirmed, source_finished=finished, stopped=stopped
    )
    assert report.complete is complete
    line = report.summary_line()
    assert (says in line) if says else ("STOPPED" not in line and "NOT CONFIRMED" not in line)


def test_dataset_records_turns_whole_floats_into_ints() -> None:
    pd = pytest.importorskip("pandas")
    from creditstream.contract import FEATURES

    frame = pd.DataFrame([{"ID": 1, **{name: 2.0 for name in FEATURES}}])
    frame["PAY_AMT1"] = 2.5
    (record,) = dataset_records(frame)
    assert record["LIMIT_BAL"] == 2 and isinstance(record["LIMIT_BAL"], int)
    assert record["PAY_AMT1"] == 2.5
