"""Poison under load: every bad-input kind and a message that breaks scoring, mixed into a stream
of good records. Bad records reach the dead-letter queue with reasons; the message that keeps
failing stops at the delivery limit; every good record is stored once; the consumer never dies.

The bad-input table and the failing scorer are the integration suite's
(tests/integration/test_bad_input_and_rpc.py); here they run at volume, interleaved.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import pika
import pytest

from creditstream.codec import RejectReason, decode_request
from creditstream.consumer import Consumer
from creditstream.scoring import OnnxScorer
from creditstream.settings import Settings
from creditstream.settlement import SCORING_FAILED
from creditstream.store import ResultsStore
from creditstream.topology import REASON_HEADER, REQUEST_ROUTING_KEY, Topology
from tests.faults.fleet import Fleet
from tests.faults.ledger import record_run
from tests.faults.test_codec_fuzz import record_from_seed
from tests.helpers import AMQP_URL, Processes, count_rows, stored_rows, wait_until
from tests.integration.test_bad_input_and_rpc import (
    BAD_BODIES,
    FailsOnRecord,
    drain_dead_letters,
    good,
)

pytestmark = pytest.mark.faults

POISON_LIMIT_BAL = 777_000


@dataclass(frozen=True)
class PoisonRun:
    """How much of each: good single records, copies of every bad kind, mixed batches, poison."""

    good: int
    copies_of_each_bad_kind: int
    mixed_batches: int
    poison: int
    delivery_limit: int = 3


CASES = [
    pytest.param(PoisonRun(2_000, 3, 20, 3), id="short"),
    pytest.param(PoisonRun(30_000, 50, 500, 20), marks=pytest.mark.slow, id="30k"),
]


def _messages(
    run: PoisonRun, rng: random.Random
) -> tuple[list[tuple[bytes, str | None, str]], Counter[str], set[str]]:
    """(body, content type, message id) in a random order; expected dead-letter reasons; ids."""
    messages: list[tuple[bytes, str | None, str]] = []
    reasons: Counter[str] = Counter()
    expected_ids: set[str] = set()
    for i in range(run.good):
        messages.append((json.dumps(good(f"g{i}")).encode(), "application/json", f"good-{i}"))
        expected_ids.add(f"g{i}")
    for copy in range(run.copies_of_each_bad_kind):
        for param in BAD_BODIES:
            body, content_type, reason = cast(tuple[bytes, str | None, str], param.values)
            messages.append((body, content_type, f"bad-{param.id}-{copy}"))
            reasons[reason] += 1
    for i in range(run.mixed_batches):
        batch = [good(f"m{i}a"), {**good(f"m{i}x"), "PAY_0": 11}, good(f"m{i}b")]
        messages.append((json.dumps(batch).encode(), "application/json", f"mixed-{i}"))
        reasons[RejectReason.RANGE] += 1
        expected_ids |= {f"m{i}a", f"m{i}b"}
    for i in range(run.poison):
        body = json.dumps({**good(f"p{i}"), "LIMIT_BAL": POISON_LIMIT_BAL}).encode()
        messages.append((body, "application/json", f"poison-{i}"))
    rng.shuffle(messages)
    return messages, reasons, expected_ids


def _publish_all(settings: Settings, messages: list[tuple[bytes, str | None, str]]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        Topology.from_settings(settings).declare(channel)
        channel.confirm_delivery()
        for body, content_type, message_id in messages:
            channel.basic_publish(
                settings.requests_exchange,
                REQUEST_ROUTING_KEY,
                body,
                pika.BasicProperties(
                    content_type=content_type, delivery_mode=2, message_id=message_id
                ),
            )
    finally:
        connection.close()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("run", CASES)
def test_bad_input_and_a_failing_message_are_quarantined_under_load(
    run: PoisonRun,
    pg_settings: Callable[..., Settings],
    request: pytest.FixtureRequest,
) -> None:
    settings = pg_settings(
        delivery_limit=run.delivery_limit, max_body_bytes=4096, retry_delay_ms=200
    )
    messages, reasons, expected_ids = _messages(run, random.Random(7))
    scorer = FailsOnRecord(OnnxScorer.from_settings(settings), poison_limit_bal=POISON_LIMIT_BAL)
    store = ResultsStore.from_settings(settings)
    consumer = Consumer(settings, scorer, store)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        wait_until(lambda: consumer.health.broker_connected, timeout=20, message="consumer up")
        _publish_all(settings, messages)
        expected_dead = sum(reasons.values()) + run.poison
        dead = drain_dead_letters(settings, expected=expected_dead, timeout=300)
        wait_until(
            lambda: count_rows(settings) >= len(expected_ids),
            timeout=300,
            interval=0.5,
            message="every good record stored",
        )
        time.sleep(1.0)
        alive, ready = thread.is_alive(), consumer.health.ready
    finally:
        consumer.request_stop()
        thread.join(timeout=60)
        store.dispose()

    by_broker = [(h, b) for h, b in dead if h.get(REASON_HEADER) == SCORING_FAILED]
    by_consumer = Counter(
        h[REASON_HEADER] for h, _ in dead if h.get(REASON_HEADER, SCORING_FAILED) != SCORING_FAILED
    )
    stored = [record_id for _, record_id, _ in stored_rows(settings)]
    failures = consumer.metrics.scoring_failures._value.get()
    record_run(
        "poison",
        request.node.callspec.id,
        messages=len(messages),
        good_records=len(expected_ids),
        dead_lettered_with_reason=sum(by_consumer.values()),
        dead_lettered_at_delivery_limit=len(by_broker),
        delivery_limit=run.delivery_limit,
        scoring_failures=failures,
        stored=len(stored),
        lost=len(expected_ids - set(stored)),
        duplicated=len(stored) - len(set(stored)),
        seconds=round(time.monotonic() - started, 1),
    )
    assert alive and ready, "the consumer survived everything and is still ready"
    assert by_consumer == reasons, "each bad record dead-lettered once, with its reason"
    assert sorted(json.loads(b)["ID"] for _, b in by_broker) == sorted(
        f"p{i}" for i in range(run.poison)
    )
    assert len(dead) == expected_dead, "nothing dead-lettered by the broker itself"
    # `delivery_limit` attempts through the retry queue, then dead-lettered as scoring-failed.
    assert failures == run.poison * run.delivery_limit, "no endless loop"
    assert sorted(stored) == sorted(expected_ids), "every good record exactly once"


def _fuzzed_bodies(count: int, seed: int) -> list[tuple[bytes, str | None]]:
    """Garbage, near-valid and valid bodies of every shape, reproducible from the seed."""
    rng = random.Random(seed)
    valid = json.dumps(good("v")).encode()
    bodies: list[tuple[bytes, str | None]] = []
    for i in range(count):
        kind = i % 8
        record = record_from_seed(rng.getrandbits(64))
        if kind == 0:
            body = rng.randbytes(rng.randint(0, 600))
        elif kind == 1:
            body = valid[: rng.randint(0, len(valid) - 1)]  # truncated JSON
        elif kind == 2:
            depth = rng.choice([10, 1_000, 100_000])  # deep nesting: RecursionError territory
            body = b"[" * depth + b"]" * depth
        elif kind == 3:
            field = rng.choice(list(record))
            record[field] = rng.choice([None, True, "x", [], {}, -1e308, 10**30, "1e999"])
            body = json.dumps(record).encode()
        elif kind == 4:
            body = json.dumps([record, rng.choice([1, "x", None, {}])]).encode()
        elif kind == 5:
            body = json.dumps(record).replace("0", "1e999", 1).encode()  # overflows to inf
        else:
            body = json.dumps(record if kind == 6 else [record, record_from_seed(i)]).encode()
        content_type = rng.choice(
            ["application/json"] * 6 + [None, "text/plain", "application/json; charset=utf-8"]
        )
        bodies.append((body, content_type))
    return bodies


FUZZ_CASES = [
    pytest.param(800, id="short-800-bodies"),
    pytest.param(20_000, marks=pytest.mark.slow, id="20000-bodies"),
]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("count", FUZZ_CASES)
def test_consumer_process_survives_fuzzed_bodies_exactly_as_the_codec_predicts(
    count: int,
    pg_settings: Callable[..., Settings],
    processes: Processes,
    request: pytest.FixtureRequest,
) -> None:
    settings = pg_settings(max_body_bytes=65_536)
    bodies = _fuzzed_bodies(count, seed=11)
    # The pure codec is the oracle: what the running process must store and dead-letter.
    decoded = [
        decode_request(
            body,
            content_type,
            max_body_bytes=settings.max_body_bytes,
            max_records=settings.max_records_per_message,
        )
        for body, content_type in bodies
    ]
    expected_rows = sum(len(d.records) for d in decoded)
    expected_dead = Counter(r.reason for d in decoded for r in d.rejections)
    assert expected_rows and len(expected_dead) >= 5, "the mix covers good and many bad kinds"
    fleet = Fleet(processes, settings)
    member = fleet.start()
    _publish_all(settings, [(body, ct, f"fuzz-{i}") for i, (body, ct) in enumerate(bodies)])
    dead = drain_dead_letters(settings, expected=sum(expected_dead.values()), timeout=300)
    wait_until(
        lambda: count_rows(settings) >= expected_rows, timeout=300, message="valid records stored"
    )
    time.sleep(1.0)
    fleet.scrape(member)
    alive = member.alive
    exit_codes = fleet.stop()
    got_dead = Counter(h.get(REASON_HEADER, "broker") for h, _ in dead)
    rows = count_rows(settings)
    record_run(
        "fuzz-through-consumer",
        request.node.callspec.id,
        messages=len(bodies),
        stored=rows,
        expected_stored=expected_rows,
        dead_lettered_with_reason=sum(got_dead.values()),
        reasons=dict(got_dead),
    )
    assert alive and exit_codes == [0], f"the consumer process survived:\n{member.log[-3000:]}"
    assert got_dead == expected_dead
    assert rows == expected_rows
