"""Outbox and results parts without a broker: the outbox on SQLite, offsets, stream arguments."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError

from creditstream.batcher import Prediction
from creditstream.results import events_of, parse_offset
from creditstream.settings import Settings
from creditstream.store import OutboxEvent, ResultsStore
from creditstream.topology import Topology

pytestmark = pytest.mark.unit


def prediction(request_id: str) -> Prediction:
    return Prediction(request_id, request_id, request_id, 0.4, False, 0.5, "v1", 1.0, 2.0)


def event_of(predictions: Sequence[Prediction]) -> OutboxEvent:
    body = json.dumps([p.as_event() for p in predictions]).encode()
    return OutboxEvent(f"e-{predictions[0].request_id}", body, len(predictions), "v1")


def outbox_ids(store: ResultsStore) -> list[list[str]]:
    with store.outbox_batch(100) as batch:
        return [[e["request_id"] for e in events_of(row.event.body)] for row in batch.rows]


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    store = ResultsStore.from_settings(Settings(database_url=f"sqlite:///{tmp_path}/r.db"))
    store.create_schema()
    return store


def test_an_event_is_committed_for_exactly_the_rows_a_write_added(store: ResultsStore) -> None:
    assert store.write([prediction("a"), prediction("b")], event_of) == 2
    assert store.write([prediction("a")], event_of) == 0, "all known: no event"
    assert store.write([prediction("b"), prediction("c")], event_of) == 1, "partly known"
    assert store.write([prediction("d")]) == 1, "no event asked for"
    assert outbox_ids(store) == [["a", "b"], ["c"]]
    assert store.outbox_backlog()[0] == 2


def test_published_rows_are_deleted_and_failed_ones_count_an_attempt(
    store: ResultsStore,
) -> None:
    for name in "abc":
        store.write([prediction(name)], event_of)
    with store.outbox_batch(100) as batch:
        batch.published.append(batch.rows[0].id)
        batch.failed.append(batch.rows[1].id)
    with store.outbox_batch(100) as batch:
        # NOTE: deferred rows sort behind fresh ones (one stuck destination holds up nothing)
        assert [(row.event.message_id, row.attempts) for row in batch.rows] == [
            ("e-c", 0),
            ("e-b", 1),
        ]
    with pytest.raises(RuntimeError), store.outbox_batch(100) as batch:
        batch.published.extend(row.id for row in batch.rows)
        raise RuntimeError("the relay failed mid-batch")
    assert store.outbox_backlog()[0] == 2, "an exception leaves every row as it was"


def test_results_get_finds_request_and_record_ids(store: ResultsStore) -> None:
    store.write([prediction("a"), prediction("b")], event_of)
    rows = store.get(["a", "nope"])
    assert [row["request_id"] for row in rows] == ["a"]
    assert rows[0]["probability"] == 0.4 and rows[0]["scored_at"].startswith("1970-01-01")


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        pytest.param("first", "first", id="first"),
        pytest.param("LAST", "last", id="last"),
        pytest.param("next", "next", id="next"),
        pytest.param("42", 42, id="number"),
        pytest.param(
            "2026-11-30T21:00:00Z", dt.datetime(2026, 11, 30, 21, tzinfo=dt.UTC), id="utc-time"
        ),
        pytest.param(
            "2026-11-30T21:00:00", dt.datetime(2026, 11, 30, 21, tzinfo=dt.UTC), id="naive-is-utc"
        ),
    ],
)
def test_stream_offsets(text: str, offset: object) -> None:
    assert parse_offset(text) == offset


def test_a_bad_offset_says_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="first, last, next"):
        parse_offset("yesterday")


def test_stream_arguments_come_from_the_settings() -> None:
    settings = Settings(
        results_stream_max_bytes=5_000_000,
        results_stream_max_age="12h",
        results_stream_segment_bytes=1_000_000,
    )
    assert Topology.from_settings(settings).results_stream_arguments() == {
        "x-queue-type": "stream",
        "x-max-length-bytes": 5_000_000,
        "x-max-age": "12h",
        "x-stream-max-segment-size-bytes": 1_000_000,
    }


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"results_stream_max_age": "7 days"}, id="age-format"),
        pytest.param(
            {"results_stream_max_bytes": 2_000_000, "results_stream_segment_bytes": 2_000_000},
            id="segment-not-below-retention",
        ),
    ],
)
def test_results_stream_settings_are_validated(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**overrides)  # type: ignore[arg-type]


def test_a_message_that_is_not_json_is_skipped_not_fatal() -> None:
    assert events_of(b"\xff not json") == []
    assert events_of(b'[{"request_id": "a"}, 3]') == [{"request_id": "a"}]


def test_a_digit_that_is_not_ascii_is_a_bad_offset() -> None:
    with pytest.raises(ValueError, match="not a stream offset"):
        parse_offset("²")


def test_a_relay_round_is_bounded_by_bytes_as_well_as_rows(store: ResultsStore) -> None:
    big = b"x" * 200_000
    store.enqueue([OutboxEvent(f"big-{i}", big, 0, "") for i in range(3)])
    with store.outbox_batch(100, max_bytes=300_000) as batch:
        assert [row.event.message_id for row in batch.rows] == ["big-0"]
    with store.outbox_batch(100, max_bytes=100) as batch:
        assert len(batch.rows) == 1, "at least one row, however large"
    with store.outbox_batch(100) as batch:
        assert len(batch.rows) == 3
