"""Results are retrievable: every prediction event lands in a durable, replayable stream.

Before: predictions went to a fanout exchange with no queue bound, so the broker confirmed
them and dropped them. Now the topology binds a stream queue to the predictions exchange and
the outbox relay publishes `mandatory`, so an event with nowhere to go stays in the outbox.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence

import pika
import pytest
import requests

from creditstream.autoscale.queue_depth import management_url_from_amqp
from creditstream.batcher import Prediction
from creditstream.outbox import OutboxRelay
from creditstream.settings import Settings
from creditstream.store import OutboxEvent, ResultsStore
from creditstream.topology import REQUEST_ROUTING_KEY, declare_topology
from tests.helpers import (
    AMQP_URL,
    PG_URL,
    Processes,
    read_results_stream,
    ready_in_queue,
    run_cli,
    stored_rows,
    wait_until,
)
from tests.integration.test_bad_input_and_rpc import (
    drain_dead_letters,
    good,
    publish,
    running_consumer,
)

pytestmark = pytest.mark.integration


def bound_queues(exchange: str) -> list[str]:
    """Queues bound to an exchange of the default vhost (management API)."""
    base = urllib.parse.urlsplit(management_url_from_amqp(AMQP_URL))
    response = requests.get(
        f"{base.scheme}://{base.hostname}:{base.port}/api/exchanges/%2F/"
        f"{urllib.parse.quote(exchange, safe='')}/bindings/source",
        auth=(urllib.parse.unquote(base.username or ""), urllib.parse.unquote(base.password or "")),
        timeout=10,
    )
    response.raise_for_status()
    return [b["destination"] for b in response.json() if b["destination_type"] == "queue"]


@pytest.mark.timeout(120)
def test_prediction_events_are_not_dropped_by_an_exchange_with_no_queue(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(batch_timeout_ms=20)
    with running_consumer(settings):
        for i in range(20):
            publish(settings, json.dumps(good(i)).encode(), message_id=f"m{i}")
        wait_until(lambda: len(stored_rows(settings)) == 20, timeout=30, message="stored")
        queues = bound_queues(settings.predictions_exchange)
    assert queues, (
        f"no queue is bound to {settings.predictions_exchange}: the broker confirms every "
        "prediction event and drops it"
    )


@pytest.mark.timeout(120)
def test_every_event_lands_in_the_results_stream_once(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(batch_timeout_ms=20)
    events: list[dict[str, object]] = []

    def arrived(n: int) -> Callable[[], bool]:
        def check() -> bool:
            events[:] = read_results_stream(settings, idle_s=0.5)
            return len(events) >= n

        return check

    with running_consumer(settings) as consumer:
        for i in range(30):
            publish(settings, json.dumps(good(i)).encode(), message_id=f"m{i}")
        publish(settings, json.dumps([good("b0"), good("b1")]).encode(), message_id="batch")
        wait_until(lambda: len(stored_rows(settings)) == 32, timeout=30, message="stored")
        wait_until(arrived(32), timeout=30, interval=0.5, message="32 events in the stream")
        # NOTE: a republished message (same id) adds no row, and therefore no event.
        publish(settings, json.dumps(good(0)).encode(), message_id="m0")
        wait_until(
            lambda: consumer.metrics.duplicates._value.get() >= 1,
            timeout=30,
            message="the republished record skipped",
        )
        time.sleep(1.0)
        events[:] = read_results_stream(settings, idle_s=0.5)
    assert sorted(str(e["request_id"]) for e in events) == sorted(
        [f"m{i}" for i in range(30)] + ["batch/0", "batch/1"]
    )
    assert {"probability", "is_default", "record_id", "model_version"} <= set(events[0])


def unbind(settings: Settings, bind: bool = False) -> None:
    """Take the results stream off the predictions exchange (or put it back)."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        if bind:
            channel.queue_bind(settings.results_stream, settings.predictions_exchange)
        else:
            channel.queue_unbind(settings.results_stream, settings.predictions_exchange)
    finally:
        connection.close()


@pytest.mark.timeout(120)
def test_an_unroutable_event_stays_in_the_outbox_until_a_queue_is_bound(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(batch_timeout_ms=20, outbox_retry_max_s=1.0, outbox_poll_s=0.2)
    with running_consumer(settings) as consumer:
        wait_until(lambda: consumer.health.events_relay_connected, timeout=20, message="relay up")
        unbind(settings)
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            channel = connection.channel()  # NOTE: no declare here: it would bind it again
            for i in range(5):
                channel.basic_publish(
                    settings.requests_exchange,
                    REQUEST_ROUTING_KEY,
                    json.dumps(good(i)).encode(),
                    pika.BasicProperties(content_type="application/json", message_id=f"u{i}"),
                )
        finally:
            connection.close()
        wait_until(lambda: len(stored_rows(settings)) == 5, timeout=30, message="stored")
        wait_until(
            lambda: consumer.metrics.events_returned._value.get() >= 2,
            timeout=30,
            message="returned events retried",
        )
        pending, _ = consumer.store.outbox_backlog()
        in_stream_unbound = len(read_results_stream(settings, idle_s=0.5))
        assert consumer.health.ready, "delayed events do not make the consumer unready"
        unbind(settings, bind=True)
        wait_until(
            lambda: len(read_results_stream(settings, idle_s=0.5)) >= 5,
            timeout=30,
            interval=0.5,
            message="events published once a queue is bound",
        )
        wait_until(
            lambda: consumer.store.outbox_backlog()[0] == 0, timeout=10, message="outbox empty"
        )
    assert pending >= 1 and in_stream_unbound == 0


_HOLD_ROWS = """
import sys, time
from sqlalchemy import create_engine
from creditstream.store import ResultsStore
store = ResultsStore(create_engine(sys.argv[1]), sys.argv[2])
with store.outbox_batch(100) as batch:
    print(len(batch.rows), flush=True)
    time.sleep(600)
"""


def prediction(request_id: str) -> Prediction:
    return Prediction(request_id, request_id, request_id, 0.5, False, 0.5, "v", 1.0, 2.0)


def event_of(predictions: object) -> OutboxEvent:
    return OutboxEvent("e-" + uuid.uuid4().hex, b"[]", 1, "v")


@pytest.mark.timeout(120)
def test_postgresql_relays_skip_locked_rows_and_take_over_a_killed_relays_rows(
    pg_schema: str,
) -> None:
    store = ResultsStore.from_settings(Settings(database_url=PG_URL, database_schema=pg_schema))
    try:
        store.create_schema()
        for i in range(3):
            assert store.write([prediction(f"r{i}")], event_of) == 1
        assert store.write([prediction("r0")], event_of) == 0, "no row: no second event"
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_ROWS, PG_URL, pg_schema],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "3", "the other relay claimed every row"
            with store.outbox_batch(100) as batch:
                assert batch.rows == [], "rows locked by a live relay are skipped"
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
        finally:
            if holder.poll() is None:
                holder.kill()
        # NOTE: PostgreSQL ends the killed session (and its locks) once it notices the
        # closed socket: a moment later, not at once.
        taken: list[int] = []

        def take_over() -> bool:
            with store.outbox_batch(100) as batch:
                if len(batch.rows) == 3:
                    batch.published.extend(row.id for row in batch.rows[:2])
                    batch.failed.append(batch.rows[2].id)
                    taken.extend(row.id for row in batch.rows)
            return bool(taken)

        wait_until(take_over, timeout=20, interval=0.2, message="a killed relay's rows taken over")
        with store.outbox_batch(100) as batch:
            assert [row.attempts for row in batch.rows] == [1]
        assert store.outbox_backlog()[0] == 1
    finally:
        store.dispose()


def events_for(prefix: str, n: int) -> list[Prediction]:
    return [prediction(f"{prefix}{i}") for i in range(n)]


def event_message(predictions: Sequence[Prediction]) -> OutboxEvent:
    body = json.dumps([p.as_event() for p in predictions]).encode()
    return OutboxEvent("e-" + uuid.uuid4().hex, body, len(predictions), "v")


@pytest.mark.timeout(180)
def test_relay_command_publishes_a_dead_consumers_outbox_and_results_commands_read_it(
    make_settings: Callable[..., Settings], pg_schema: str, processes: Processes
) -> None:
    """Rows committed by a consumer that died before its relay published them: a standalone
    `creditstream relay` publishes them; `results follow` prints them from the stream (from
    the first offset, or from a time), `results get` from the database."""
    settings = make_settings(database_url=PG_URL, database_schema=pg_schema, outbox_poll_s=0.2)
    store = ResultsStore.from_settings(settings)
    try:
        store.create_schema()
        assert store.write(events_for("a", 3), event_message) == 3
        relay = processes.start(["relay"], settings, "relay")
        follow_all = ["results", "follow", "--from", "first", "--idle-exit", "3"]
        wait_until(
            lambda: len(run_cli(follow_all, settings, timeout=60).stdout.splitlines()) == 3,
            timeout=60,
            interval=1,
            message="the relay published the first events",
        )
        time.sleep(1.5)
        since = dt.datetime.now(dt.UTC).isoformat()
        time.sleep(1.5)
        assert store.write(events_for("b", 2), event_message) == 2
        wait_until(lambda: store.outbox_backlog()[0] == 0, timeout=30, message="outbox empty")
        everything = run_cli(follow_all, settings, timeout=60)
        later = run_cli(
            ["results", "follow", "--from", since, "--idle-exit", "3"], settings, timeout=60
        )
        limited = run_cli(
            ["results", "follow", "--from", "first", "--limit", "2"], settings, timeout=60
        )
        got = run_cli(["results", "get", "a1", "b0", "nope"], settings, timeout=60)
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=30) == 0, relay.log_text()[-2000:]
    finally:
        store.dispose()
    ids = [json.loads(line)["request_id"] for line in everything.stdout.splitlines()]
    assert ids == ["a0", "a1", "a2", "b0", "b1"], everything.stderr[-2000:]
    assert [json.loads(line)["request_id"] for line in later.stdout.splitlines()] == ["b0", "b1"]
    assert len(limited.stdout.splitlines()) == 2 and limited.returncode == 0
    assert [json.loads(line)["request_id"] for line in got.stdout.splitlines()] == ["a1", "b0"]
    assert got.returncode == 1 and "not found: nope" in got.stderr


@pytest.mark.timeout(60)
def test_other_retention_on_an_existing_stream_does_not_stop_anyone_serving(
    make_settings: Callable[..., Settings],
) -> None:
    """Retention changed in the settings (or chart values) after the stream exists: the
    declare keeps the existing stream (a policy changes retention) instead of failing."""
    first = make_settings()
    declare_topology(first)
    changed = make_settings(results_stream_max_age="1D", results_stream_max_bytes=2_000_000_000)
    declare_topology(changed)  # raised TopologyMismatchError (PRECONDITION_FAILED) before
    assert changed.results_stream in bound_queues(changed.predictions_exchange)


@pytest.mark.timeout(90)
def test_a_dead_letter_with_nowhere_to_go_does_not_hold_up_the_events(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(outbox_poll_s=0.2, outbox_retry_max_s=1.0)
    declare_topology(settings)
    store = ResultsStore.from_settings(settings)
    store.create_schema()
    dead = OutboxEvent(
        "dead-1",
        b"{oops",
        0,
        "",
        # NOTE: a direct exchange and a key nothing is bound to (declaring the topology, as
        # the relay does on connect, cannot fix it): the broker returns it every time.
        {"exchange": settings.requests_exchange, "routing_key": "nowhere", "headers": {}},
    )
    store.enqueue([dead])  # the oldest row: its destination routes nowhere
    for prefix in "xyz":
        store.write(events_for(prefix, 2), event_message)
    relay = OutboxRelay(settings, store).start()
    try:
        wait_until(
            lambda: len(read_results_stream(settings, idle_s=0.5)) >= 6,
            timeout=30,
            interval=0.5,
            message="the events behind the stuck dead letter",
        )
        wait_until(lambda: store.outbox_backlog()[0] == 1, timeout=10, message="one row left")
    finally:
        relay.stop()
        store.dispose()
    assert relay.metrics.events_returned._value.get() >= 1


@pytest.mark.timeout(60)
def test_follow_fails_visibly_when_the_stream_cannot_be_read(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(results_stream=f"{make_settings().requests_queue}.no-such-stream")
    result = run_cli(["results", "follow", "--from", "first", "--idle-exit", "2"], settings)
    assert result.returncode == 1 and "cannot read stream" in result.stderr, result.stderr[-500:]


@pytest.mark.timeout(90)
def test_a_non_utf8_message_id_next_to_a_bad_record_is_settled_on_postgresql(
    make_settings: Callable[..., Settings], pg_schema: str
) -> None:
    """pika hands a short string that is not UTF-8 over as bytes: the event and the dead
    letter of its batch still reach the outbox, and every delivery is acked."""
    settings = make_settings(database_url=PG_URL, database_schema=pg_schema, batch_timeout_ms=200)
    with running_consumer(settings):
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            channel = connection.channel()
            for message_id, body in [
                (b"ok-1", json.dumps(good("g1")).encode()),
                (b"bad-\xed\xa0\x80", json.dumps([good("g2"), {**good("x"), "SEX": 9}]).encode()),
                (b"ok-2", json.dumps(good("g3")).encode()),
            ]:
                channel.basic_publish(
                    settings.requests_exchange,
                    REQUEST_ROUTING_KEY,
                    body,
                    pika.BasicProperties(
                        content_type="application/json",
                        message_id=message_id,  # type: ignore[arg-type]
                    ),
                )
        finally:
            connection.close()
        wait_until(lambda: len(stored_rows(settings)) == 3, timeout=30, message="stored")
        dead = drain_dead_letters(settings, expected=1, timeout=30)
        wait_until(
            lambda: len(read_results_stream(settings, idle_s=0.5)) >= 3,
            timeout=30,
            interval=0.5,
            message="3 events",
        )
        assert ready_in_queue(settings) == 0
    assert len(dead) == 1
