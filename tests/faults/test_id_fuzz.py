"""Fuzz of record IDs and message ids through a real consumer on PostgreSQL (issue 9, item 6).

IDs and message ids with NUL, lone surrogates (as JSON escapes in the body, as invalid UTF-8 in
the AMQP property), 255-byte message ids, right-to-left text and combining characters. The
oracle is the codec plus the one rule of the database: PostgreSQL text cannot hold NUL. Each
record is stored exactly once with the exact id (no normalisation, no truncation), or
dead-lettered exactly once with the reason the oracle names.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import pika
import pytest

from creditstream.batcher import request_id_for
from creditstream.client import SMOKE_RECORD
from creditstream.codec import ValidRecord, decode_request
from creditstream.consumer import Consumer, message_id_of
from creditstream.contract import ID_MAX_LENGTH
from creditstream.scoring import OnnxScorer
from creditstream.settings import Settings
from creditstream.settlement import STORE_REJECTED
from creditstream.store import ResultsStore
from creditstream.topology import REASON_HEADER, REQUEST_ROUTING_KEY, Topology
from tests.faults.ledger import record_run
from tests.helpers import AMQP_URL, stored_rows, wait_until
from tests.integration.test_bad_input_and_rpc import drain_dead_letters

pytestmark = pytest.mark.faults

_PIECES = [
    "a",
    "Z9",
    "\u0000",  # NUL: valid JSON and UTF-8, refused by PostgreSQL text
    "\u05e9\u05dc\u05d5\u05dd",  # Hebrew (RTL)
    "\u0645\u0631\u062d\u0628\u0627",  # Arabic (RTL)
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "e\u0301",  # e + COMBINING ACUTE (not normalised to é)
    "\u0308\u0323",  # combining marks without a base
    "\U0001f600",  # astral (4 bytes in UTF-8)
    "\u6f22",  # 3 bytes in UTF-8
    " ",
    "\ufeff",  # BOM / zero-width no-break space
    '"\\/',
]


def _text(rng: random.Random, max_chars: int) -> str:
    size = rng.choice([1, max_chars, rng.randint(1, max_chars)])
    out = ""
    while len(out) < size:
        out += rng.choice(_PIECES)
    return out[:size]


def _record_id(rng: random.Random) -> tuple[int | str, bytes | None]:
    """An ID, and sometimes a raw JSON text for it (lone surrogate escapes)."""
    kind = rng.random()
    if kind < 0.1:
        return rng.randint(0, 2**63 - 1), None
    if kind < 0.2:
        return "x", rng.choice([b'"\\ud800"', b'"a\\udc00"', b'"\\ud83d"'])  # lone surrogates
    if kind < 0.25:
        return "y" * (ID_MAX_LENGTH + 1), None  # one too long: bad-id
    return _text(rng, ID_MAX_LENGTH), None


def _message_id(rng: random.Random, n: int) -> str | bytes:
    kind = rng.random()
    if kind < 0.15:
        return f"{n}-" + "m" * (255 - len(f"{n}-"))  # 255 bytes, the AMQP maximum
    if kind < 0.25:
        prefix = f"{n}-"  # then 3-byte characters up to the 255-byte maximum
        return prefix + "\u6f22" * ((255 - len(prefix)) // 3)
    if kind < 0.3:
        return f"{n}-".encode() + bytes([0xFF, 0xFE, 0xED])  # not UTF-8 (a lone surrogate's kin)
    if kind < 0.35:
        prefix = f"{n}-".encode()  # not UTF-8, up to the 255-byte maximum
        return prefix + bytes([0xED, 0xA0, 0x80]) * ((255 - len(prefix)) // 3)
    if kind < 0.45:
        return f"{n}-nul\u0000"
    text = f"{n}-" + _text(rng, 60)
    while len(text.encode()) > 255:
        text = text[:-1]
    return text


def _body(rng: random.Random) -> bytes:
    records = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        record_id, raw = _record_id(rng)
        text = json.dumps({**SMOKE_RECORD, "ID": record_id})
        if raw is not None:
            text = text.replace('"ID": "x"', '"ID": ' + raw.decode())
        records.append(text)
    return (records[0] if len(records) == 1 else "[" + ",".join(records) + "]").encode()


CASES = [
    pytest.param(300, id="short-300-messages"),
    pytest.param(5_000, marks=pytest.mark.slow, id="5000-messages"),
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("count", CASES)
def test_ids_and_message_ids_are_stored_or_dead_lettered_as_the_oracle_says(
    count: int, pg_settings: Callable[..., Settings], request: pytest.FixtureRequest
) -> None:
    settings = pg_settings(batch_timeout_ms=50)
    rng = random.Random(20261130)
    messages = [(_body(rng), _message_id(rng, n)) for n in range(count)]

    expected_rows: dict[str, str] = {}  # request_id -> record id as stored
    expected_dead: Counter[str] = Counter()
    for body, raw_mid in messages:
        decoded = decode_request(
            body,
            "application/json",
            max_body_bytes=settings.max_body_bytes,
            max_records=settings.max_records_per_message,
        )
        expected_dead.update(r.reason for r in decoded.rejections)
        mid = message_id_of(raw_mid, body)
        for record in decoded.records:
            assert isinstance(record, ValidRecord)
            if "\x00" in str(record.record_id) or "\x00" in mid:
                expected_dead[STORE_REJECTED] += 1
            else:
                expected_rows[request_id_for(mid, record.index, decoded.is_batch)] = str(
                    record.record_id
                )
    assert expected_rows and expected_dead[STORE_REJECTED] and len(expected_dead) >= 3

    store = ResultsStore.from_settings(settings)
    consumer = Consumer(settings, OnnxScorer.from_settings(settings), store)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        wait_until(lambda: consumer.health.broker_connected, timeout=20, message="consumer up")
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            channel = connection.channel()
            Topology.from_settings(settings).declare(channel)
            channel.confirm_delivery()
            for body, raw_mid in messages:
                channel.basic_publish(
                    settings.requests_exchange,
                    REQUEST_ROUTING_KEY,
                    body,
                    pika.BasicProperties(
                        content_type="application/json", delivery_mode=2, message_id=raw_mid
                    ),
                )
        finally:
            connection.close()
        dead = drain_dead_letters(settings, expected=sum(expected_dead.values()), timeout=120)
        wait_until(
            lambda: len(stored_rows(settings)) >= len(expected_rows),
            timeout=120,
            message="every storable record stored",
        )
        time.sleep(1.0)
        extra = drain_dead_letters(settings, expected=1, timeout=0.5)
        alive, ready = thread.is_alive(), consumer.health.ready
    finally:
        consumer.request_stop()
        thread.join(timeout=60)
        store.dispose()
    rows = stored_rows(settings)
    got_dead = Counter(h[REASON_HEADER] for h, _ in dead)
    record_run(
        "id-fuzz-through-consumer-on-postgresql",
        request.node.callspec.id,
        messages=count,
        stored=len(rows),
        expected_stored=len(expected_rows),
        dead_lettered_with_reason=sum(got_dead.values()),
        reasons=dict(got_dead),
        seconds=round(time.monotonic() - started, 1),
    )
    assert alive and ready, "the consumer survived every id and is still ready"
    assert got_dead == expected_dead and not extra, "each refusal dead-lettered once"
    assert {request_id: record_id for request_id, record_id, _ in rows} == expected_rows
    assert len(rows) == len(expected_rows), "each record stored once, with its exact id"
