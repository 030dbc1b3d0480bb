"""Durable first, events after: a real memory alarm does not stop one consumer draining a backlog.

The broker's memory alarm blocks every connection that publishes. A consumer that published
(and waited for the confirm of) its prediction events on the connection it acks on could not
ack during the alarm, so the backlog that raised the alarm never drained. Now results are
committed together with an outbox row, the delivery is acked at once, and the events reach the
results stream from the outbox, on a separate connection, once the alarm clears.

The alarm is broker-wide (other publishers on this machine pause too): it is held only while
the backlog drains, under the machine-wide alarm lock, and the configured watermark is restored
in `finally` and checked afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pika
import pytest

from creditstream.client import SMOKE_RECORD
from creditstream.settings import Settings
from creditstream.topology import REQUEST_ROUTING_KEY, Topology
from tests.faults.conftest import Workload, verdict
from tests.faults.fleet import Fleet
from tests.faults.injectors import current_watermark, memory_alarm, rabbitmqctl
from tests.faults.ledger import record_run
from tests.helpers import (
    AMQP_URL,
    Processes,
    count_rows,
    read_results_stream,
    ready_in_queue,
    wait_until,
)
from tests.integration.test_bad_input_and_rpc import running_consumer

pytestmark = pytest.mark.faults

CASES = [
    pytest.param(Workload(3_000, real_data=False), 120, id="short-3k-backlog"),
    pytest.param(Workload(20_000, real_data=False), 600, marks=pytest.mark.slow, id="20k-backlog"),
]


def watermark_in_force() -> str:
    """The node's vm_memory_high_watermark now (what the alarm changed)."""
    return rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()


@pytest.mark.timeout(1200)
@pytest.mark.parametrize(("workload", "drain_timeout_s"), CASES)
def test_one_consumer_drains_a_backlog_into_the_database_during_a_memory_alarm(
    workload: Workload,
    drain_timeout_s: float,
    pg_settings: Callable[..., Settings],
    processes: Processes,
    request: pytest.FixtureRequest,
) -> None:
    n = workload.records
    settings = pg_settings()
    producer = processes.start(
        ["produce", *workload.produce_args(), "--no-progress"], settings, "producer"
    )
    assert producer.wait(timeout=300) == 0, producer.log_text()[-2000:]
    assert ready_in_queue(settings) == n, "the whole run waits in the queue as a backlog"

    watermark = current_watermark()  # NOTE: read before: each rabbitmqctl call costs seconds
    fleet = Fleet(processes, settings)
    events_during: list[dict[str, object]] = []
    with memory_alarm(watermark):
        started = time.monotonic()
        member = fleet.start()
        stored_at_start = count_rows(settings)

        def acked() -> int:
            fleet.scrape(member)
            return int(member.last["creditstream_messages_total"])

        # NOTE: judged by acks, not rows: rows alone could reach n with acks blocked whenever
        # the prefetch covers the backlog.
        drained = False
        deadline = started + drain_timeout_s
        while time.monotonic() < deadline:
            if acked() >= n and count_rows(settings) >= n:
                drained = True
                break
            time.sleep(0.5)
        drain_s = round(time.monotonic() - started, 1)
        stored_during, acked_during = count_rows(settings), acked()
        left_in_queue = ready_in_queue(settings)
        assert drained, (
            f"{stored_during:,} of {n:,} stored, {acked_during:,} acked in {drain_s} s of memory "
            f"alarm ({left_in_queue:,} still ready in the queue): draining stopped under the alarm"
        )
        # NOTE: still inside the alarm: the events are held back (in the outbox), not lost.
        events_during = read_results_stream(settings, idle_s=1.0)
    after = watermark_in_force()
    assert after == "0.4", f"watermark after the test: {after}"

    cleared = time.monotonic()
    events: list[dict[str, object]] = []

    def all_events_arrived() -> bool:
        events[:] = read_results_stream(settings, idle_s=1.0)
        return len(events) >= n

    wait_until(all_events_arrived, timeout=300, interval=2, message=f"{n:,} events in the stream")
    events_s = round(time.monotonic() - cleared, 1)
    exit_codes = fleet.stop()
    result = verdict(settings, workload)
    request_ids = [str(event["request_id"]) for event in events]
    record_run(
        "memory-alarm",
        request.node.callspec.id,
        records=n,
        consumers=1,
        stored_at_consumer_start=stored_at_start,
        drain_seconds_during_alarm=drain_s,
        stored_during_alarm=stored_during,
        acked_during_alarm=acked_during,
        events_in_stream_during_alarm=len(events_during),
        events_in_stream_after=len(events),
        distinct_events_after=len(set(request_ids)),
        seconds_until_events_after_clear=events_s,
        watermark_after=after,
        stored=result.stored,
        lost=result.lost,
        duplicated=result.duplicated,
    )
    assert events_during == [], "the alarm held every event back (it was real)"
    assert exit_codes == [0]
    assert result == type(result)(stored=n, lost=0, duplicated=0, unexpected=0)
    assert len(events) == n and len(set(request_ids)) == n, "each event once in the stream"
    assert {str(event["record_id"]) for event in events} == workload.expected_ids()


@pytest.mark.timeout(300)
def test_a_reply_waits_for_the_alarm_to_clear_while_the_ack_does_not(
    make_settings: Callable[..., Settings], request: pytest.FixtureRequest
) -> None:
    """What a caller waiting on reply_to sees: its request is scored, stored and acked during
    the alarm, but the reply (published on the relay's blocked connection) arrives only once
    the alarm clears."""
    settings = make_settings(batch_timeout_ms=20)
    reply_queue = f"{settings.requests_queue}.replies"
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        Topology.from_settings(settings).declare(channel)
        channel.queue_declare(reply_queue, durable=False)
        channel.basic_publish(
            settings.requests_exchange,
            REQUEST_ROUTING_KEY,
            json.dumps(SMOKE_RECORD).encode(),
            pika.BasicProperties(
                content_type="application/json",
                message_id="rpc-1",
                reply_to=reply_queue,
                correlation_id="c-1",
            ),
        )
        watermark = current_watermark()
        alarm = memory_alarm(watermark)
        alarm.__enter__()
        alarm_up = True
        reply: list[bytes] = []

        def replied() -> bool:
            method, props, body = channel.basic_get(reply_queue, auto_ack=True)
            if method is not None:
                assert props.correlation_id == "c-1"
                reply.append(body)
            return bool(reply)

        try:
            # NOTE: the consumer outlives the alarm, as a deployment's would.
            with running_consumer(settings) as consumer:
                started = time.monotonic()
                wait_until(
                    lambda: consumer.metrics.messages._value.get() >= 1,
                    timeout=60,
                    message="the request stored and acked during the alarm",
                )
                acked_s = round(time.monotonic() - started, 1)
                time.sleep(3.0)
                assert count_rows(settings) == 1 and ready_in_queue(settings) == 0
                assert not replied(), "a reply got through the alarm"
                alarm_up = False
                alarm.__exit__(None, None, None)
                cleared = time.monotonic()
                wait_until(replied, timeout=60, interval=0.2, message="the reply after the alarm")
                reply_s = round(time.monotonic() - cleared, 1)
        finally:
            if alarm_up:
                alarm.__exit__(None, None, None)
        channel.queue_delete(reply_queue)
    finally:
        connection.close()
    record_run(
        "memory-alarm",
        "reply-during-alarm",
        records=1,
        consumers=1,
        acked_seconds_during_alarm=acked_s,
        reply_seconds_after_clear=reply_s,
    )
    assert watermark_in_force() == "0.4"
    assert json.loads(reply[0])["record_id"] == SMOKE_RECORD["ID"]


@pytest.mark.timeout(400)
def test_a_bad_record_during_a_memory_alarm_does_not_stop_the_acks(
    pg_settings: Callable[..., Settings], processes: Processes, request: pytest.FixtureRequest
) -> None:
    """Dead letters leave through the outbox too: a rejected record met during the alarm does
    not block the consumer's connection (a publish there would stop every ack)."""
    settings = pg_settings()
    good_n, bad_n = 1_000, 5
    producer = processes.start(
        ["produce", "--synthetic", "--limit", str(good_n), "--no-progress"], settings, "producer"
    )
    assert producer.wait(timeout=300) == 0, producer.log_text()[-2000:]
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for i in range(bad_n):
            channel.basic_publish(
                settings.requests_exchange,
                REQUEST_ROUTING_KEY,
                b"{not json",
                pika.BasicProperties(content_type="application/json", message_id=f"bad-{i}"),
            )
    finally:
        connection.close()
    n = good_n + bad_n
    assert ready_in_queue(settings) == n
    watermark = current_watermark()
    fleet = Fleet(processes, settings)
    with memory_alarm(watermark):
        started = time.monotonic()
        member = fleet.start()

        def acked() -> int:
            fleet.scrape(member)
            return int(member.last["creditstream_messages_total"])

        drained = False
        while time.monotonic() - started < 60:
            if acked() >= n:
                drained = True
                break
            time.sleep(0.5)
        drain_s = round(time.monotonic() - started, 1)
        stored, handled = count_rows(settings), acked()
        dead_during = dead_letter_count(settings)
    assert watermark_in_force() == "0.4"
    assert drained, (
        f"{handled:,} of {n:,} messages acked ({stored:,} of {good_n:,} records stored) after "
        f"{drain_s} s of memory alarm: a dead letter blocked the consumer's connection"
    )
    wait_until(
        lambda: dead_letter_count(settings) == bad_n, timeout=60, message="dead letters after"
    )
    exit_codes = fleet.stop()
    result = verdict(settings, Workload(good_n, real_data=False))
    record_run(
        "memory-alarm",
        "bad-records-during-alarm",
        records=good_n,
        bad_records=bad_n,
        consumers=1,
        drain_seconds_during_alarm=drain_s,
        acked_during_alarm=handled,
        dead_letters_during_alarm=dead_during,
        dead_letters_after=dead_letter_count(settings),
        dead_lettered_with_reason=dead_letter_count(settings),
        stored=result.stored,
        lost=result.lost,
        duplicated=result.duplicated,
    )
    assert exit_codes == [0]
    assert result == type(result)(stored=good_n, lost=0, duplicated=0, unexpected=0)
    assert dead_during == 0, "the alarm held the dead letters back (it was real)"


def dead_letter_count(settings: Settings) -> int:
    """Messages in the dead-letter queue."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        frame = connection.channel().queue_declare(settings.dead_letter_queue, passive=True)
        return int(frame.method.message_count)
    finally:
        connection.close()
