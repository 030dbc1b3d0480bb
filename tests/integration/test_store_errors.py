"""Store errors on the real PostgreSQL: a record the database refuses is dead-lettered alone
(reason `store-rejected` with the database's detail), its batch-mates are stored, and the
consumer keeps serving (issue 9, item 2)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from sqlalchemy import text

from creditstream.settings import Settings
from creditstream.settlement import STORE_REJECTED
from creditstream.store import ResultsStore
from creditstream.topology import DETAIL_HEADER, REASON_HEADER, SOURCE_HEADER
from tests.helpers import PG_URL, stored_rows, wait_until
from tests.integration.test_bad_input_and_rpc import (
    drain_dead_letters,
    good,
    publish,
    running_consumer,
)

pytestmark = pytest.mark.integration

LONG_MESSAGE_ID = "m" * 230  # AMQP allows 255 bytes; the column held 200 (now 255)


@pytest.fixture
def pg_settings(make_settings: Callable[..., Settings], pg_schema: str) -> Callable[..., Settings]:
    def build(**overrides: object) -> Settings:
        return make_settings(database_url=PG_URL, database_schema=pg_schema, **overrides)

    return build


@pytest.mark.timeout(120)
def test_records_postgresql_refuses_are_dead_lettered_and_the_rest_stored(
    pg_settings: Callable[..., Settings],
) -> None:
    # A long flush window puts all six messages in one batch: the bad ones must not hold
    # their batch-mates.
    settings = pg_settings(batch_timeout_ms=500, batch_size=64)
    with running_consumer(settings) as consumer:
        publish(settings, json.dumps(good("g1")).encode(), message_id="g1")
        publish(settings, json.dumps(good("a\u0000b")).encode(), message_id="nul-id")
        publish(settings, json.dumps(good("g2")).encode(), message_id="g2")
        publish(settings, json.dumps(good("long")).encode(), message_id=LONG_MESSAGE_ID)
        publish(settings, json.dumps([good("g3"), good("x\u0000")]).encode(), message_id="mix")
        publish(settings, json.dumps(good("g4")).encode(), message_id="g4")
        dead = drain_dead_letters(settings, expected=2, timeout=30)
        wait_until(lambda: len(stored_rows(settings)) >= 5, timeout=30, message="good rows")
        time.sleep(0.5)
        ready = consumer.health.ready
    assert ready, "the consumer is still ready: a refused record is not an outage"
    rows = sorted(record_id for _, record_id, _ in stored_rows(settings))
    assert rows == ["g1", "g2", "g3", "g4", "long"]
    assert sorted(h[REASON_HEADER] for h, _ in dead) == [STORE_REJECTED] * 2
    assert all(h[DETAIL_HEADER] for h, _ in dead)
    by_source = {h[SOURCE_HEADER]: json.loads(body) for h, body in dead}
    assert by_source["nul-id"]["ID"] == "a\u0000b"
    assert by_source["mix"]["ID"] == "x\u0000"


@pytest.mark.timeout(120)
def test_a_table_of_an_older_version_refuses_a_long_message_id_alone(
    pg_settings: Callable[..., Settings], pg_schema: str
) -> None:
    settings = pg_settings(batch_timeout_ms=500, batch_size=64)
    store = ResultsStore.from_settings(settings)
    try:
        store.create_schema()  # then narrowed, as tables created before the 255 were
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    f'ALTER TABLE "{pg_schema}".predictions '
                    "ALTER COLUMN message_id TYPE varchar(200)"
                )
            )
    finally:
        store.dispose()
    with running_consumer(settings) as consumer:
        publish(settings, json.dumps(good("before")).encode(), message_id="before")
        publish(settings, json.dumps(good("long")).encode(), message_id=LONG_MESSAGE_ID)
        publish(settings, json.dumps(good("after")).encode(), message_id="after")
        dead = drain_dead_letters(settings, expected=1, timeout=30)
        wait_until(lambda: len(stored_rows(settings)) >= 2, timeout=30, message="good rows")
        ready = consumer.health.ready
    assert ready
    assert sorted(r for _, r, _ in stored_rows(settings)) == ["after", "before"]
    assert [h[REASON_HEADER] for h, _ in dead] == [STORE_REJECTED]
    assert "too long" in dead[0][0][DETAIL_HEADER]


@pytest.mark.timeout(120)
def test_a_dropped_table_is_created_again_and_the_held_batch_stored(
    pg_settings: Callable[..., Settings], pg_schema: str
) -> None:
    settings = pg_settings(batch_timeout_ms=20, reconnect_max_s=0.5)
    with running_consumer(settings) as consumer:
        publish(settings, json.dumps(good("first")).encode(), message_id="first")
        wait_until(lambda: len(stored_rows(settings)) == 1, timeout=30, message="first stored")
        store = ResultsStore.from_settings(settings)
        try:
            with store.engine.begin() as conn:  # a restore from an empty snapshot, a reset
                conn.execute(text(f'DROP TABLE "{pg_schema}".predictions'))
        finally:
            store.dispose()
        publish(settings, json.dumps(good("second")).encode(), message_id="second")
        wait_until(
            lambda: [r for _, r, _ in stored_rows(settings)] == ["second"],
            timeout=30,
            message="the table created again and the held record stored",
        )
        wait_until(lambda: consumer.health.ready, timeout=10, message="ready again")


@pytest.mark.timeout(120)
def test_a_refusal_of_every_record_is_held_as_an_outage_not_dead_lettered(
    pg_settings: Callable[..., Settings], pg_schema: str
) -> None:
    settings = pg_settings(batch_timeout_ms=200, reconnect_max_s=0.5)
    store = ResultsStore.from_settings(settings)
    table = f'"{pg_schema}".predictions'
    try:
        store.create_schema()
        with store.engine.begin() as conn:  # a migration every row now violates
            conn.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT nope CHECK (probability < 0)"))
        with running_consumer(settings) as consumer:
            records = [good(f"r{i}") for i in range(5)]
            publish(settings, json.dumps(records).encode(), message_id="systemic")
            wait_until(
                lambda: consumer.metrics.store_errors._value.get() >= 2,
                timeout=30,
                message="store errors",
            )
            assert not consumer.health.ready, "held as an outage: readiness red"
            assert not drain_dead_letters(settings, expected=1, timeout=1)
            with store.engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} DROP CONSTRAINT nope"))
            wait_until(lambda: len(stored_rows(settings)) == 5, timeout=30, message="stored")
        assert not drain_dead_letters(settings, expected=1, timeout=1)
    finally:
        store.dispose()
