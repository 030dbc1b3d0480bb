"""Store errors on the real PostgreSQL: a record the database refuses is dead-lettered alone
(reason `store-rejected` with the database's detail), its batch-mates are stored, and the
consumer keeps serving (issue 9, item 2)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from creditstream.settings import Settings
from creditstream.settlement import STORE_REJECTED
from creditstream.topology import DETAIL_HEADER, REASON_HEADER, SOURCE_HEADER
from tests.helpers import PG_URL, stored_rows, wait_until
from tests.integration.test_bad_input_and_rpc import (
    drain_dead_letters,
    good,
    publish,
    running_consumer,
)

pytestmark = pytest.mark.integration

LONG_MESSAGE_ID = "m" * 230  # AMQP allows 255 characters; the column holds 200


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
        dead = drain_dead_letters(settings, expected=3, timeout=30)
        wait_until(lambda: len(stored_rows(settings)) >= 4, timeout=30, message="good rows")
        time.sleep(0.5)
        ready = consumer.health.ready
    assert ready, "the consumer is still ready: a refused record is not an outage"
    rows = sorted(record_id for _, record_id, _ in stored_rows(settings))
    assert rows == ["g1", "g2", "g3", "g4"]
    assert sorted(h[REASON_HEADER] for h, _ in dead) == [STORE_REJECTED] * 3
    assert all(h[DETAIL_HEADER] for h, _ in dead)
    by_source = {h[SOURCE_HEADER]: json.loads(body) for h, body in dead}
    assert by_source["nul-id"]["ID"] == "a\u0000b"
    assert by_source[LONG_MESSAGE_ID]["ID"] == "long"
    assert by_source["mix"]["ID"] == "x\u0000"
