"""Bad input is quarantined with a reason; the RPC client is correct under concurrency."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import pika
import pytest

from creditstream.client import SMOKE_RECORD, PredictionClient, PredictionError
from creditstream.codec import RejectReason
from creditstream.consumer import Consumer
from creditstream.metrics import ConsumerMetrics, HealthState
from creditstream.scoring import OnnxScorer
from creditstream.settings import Settings
from creditstream.store import ResultsStore
from creditstream.topology import (
    DETAIL_HEADER,
    INDEX_HEADER,
    REASON_HEADER,
    REQUEST_ROUTING_KEY,
    Topology,
)
from tests.helpers import AMQP_URL, stored_rows, wait_until

pytestmark = pytest.mark.integration


@contextmanager
def running_consumer(settings: Settings) -> Iterator[Consumer]:
    """An in-process consumer on a thread (its adapters are the real ones)."""
    store = ResultsStore.from_settings(settings)
    consumer = Consumer(
        settings, OnnxScorer.from_settings(settings), store, ConsumerMetrics(), HealthState()
    )
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    wait_until(lambda: consumer.health.broker_connected, timeout=20, message="consumer up")
    try:
        yield consumer
    finally:
        consumer.request_stop()
        thread.join(timeout=30)
        store.dispose()
        assert not thread.is_alive(), "consumer did not stop"


def good(record_id: int | str) -> dict[str, Any]:
    return {**SMOKE_RECORD, "ID": record_id}


def publish(
    settings: Settings,
    body: bytes,
    content_type: str | None = "application/json",
    message_id: str | None = None,
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        Topology.from_settings(settings).declare(channel)
        channel.basic_publish(
            settings.requests_exchange,
            REQUEST_ROUTING_KEY,
            body,
            pika.BasicProperties(content_type=content_type, delivery_mode=2, message_id=message_id),
        )
    finally:
        connection.close()


def drain_dead_letters(
    settings: Settings, expected: int, timeout: float = 20
) -> list[tuple[dict[str, Any], bytes]]:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    found: list[tuple[dict[str, Any], bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        channel = connection.channel()
        while len(found) < expected and time.monotonic() < deadline:
            method, props, body = channel.basic_get(settings.dead_letter_queue, auto_ack=True)
            if method is None:
                time.sleep(0.1)
                continue
            found.append((props.headers or {}, body))
    finally:
        connection.close()
    return found


BAD_BODIES = [
    pytest.param(b"{oops", "application/json", RejectReason.MALFORMED_JSON, id="malformed-json"),
    pytest.param(b'"just a string"', "application/json", RejectReason.NOT_OBJECT, id="non-object"),
    pytest.param(
        json.dumps({k: v for k, v in good(1).items() if k != "AGE"}).encode(),
        "application/json",
        RejectReason.MISSING,
        id="missing-field",
    ),
    pytest.param(
        json.dumps({**good(2), "colour": "red"}).encode(),
        "application/json",
        RejectReason.EXTRA,
        id="extra-field",
    ),
    pytest.param(
        json.dumps({**good(3), "AGE": "thirty"}).encode(),
        "application/json",
        RejectReason.TYPE,
        id="wrong-type",
    ),
    pytest.param(
        json.dumps({**good(4), "SEX": 3}).encode(),
        "application/json",
        RejectReason.RANGE,
        id="out-of-range-code",
    ),
    pytest.param(
        json.dumps(good(5)).replace('"AGE": 35', '"AGE": NaN').encode(),
        "application/json",
        RejectReason.MALFORMED_JSON,
        id="nan",
    ),
    pytest.param(
        json.dumps(good(6)).replace('"BILL_AMT1": 20000', '"BILL_AMT1": Infinity').encode(),
        "application/json",
        RejectReason.MALFORMED_JSON,
        id="infinity",
    ),
    pytest.param(
        b"[" + b" " * 5000 + json.dumps(good(7)).encode() + b"]",
        "application/json",
        RejectReason.TOO_LARGE,
        id="oversized",
    ),
    pytest.param(
        json.dumps(good(8)).encode(), "text/csv", RejectReason.CONTENT_TYPE, id="wrong-content-type"
    ),
]


@pytest.mark.timeout(120)
def test_every_kind_of_bad_input_is_dead_lettered_and_good_records_still_scored(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(max_body_bytes=4096)
    with running_consumer(settings) as consumer:
        for param in BAD_BODIES:
            body, content_type, _reason = param.values
            publish(settings, body, content_type, message_id=f"bad-{param.id}")
        # A batch message mixing good records with a bad one: the bad one goes alone.
        publish(
            settings,
            json.dumps([good(100), {**good(101), "PAY_0": 11}, good(102)]).encode(),
            message_id="mixed-batch",
        )
        dead = drain_dead_letters(settings, expected=len(BAD_BODIES) + 1)
        wait_until(lambda: len(stored_rows(settings)) >= 2, timeout=20, message="good rows")
        assert consumer.health.ready, "consumer still healthy after all that"

    reasons = sorted(headers[REASON_HEADER] for headers, _ in dead)
    expected = sorted([p.values[2] for p in BAD_BODIES] + [RejectReason.RANGE])
    assert reasons == expected
    assert all(headers[DETAIL_HEADER] for headers, _ in dead)
    mixed = [(h, b) for h, b in dead if h.get(INDEX_HEADER) == 1]
    assert len(mixed) == 1 and json.loads(mixed[0][1])["ID"] == 101
    rows = stored_rows(settings)
    assert sorted(record_id for _, record_id, _ in rows) == ["100", "102"]
    assert sorted(request_id for request_id, _, _ in rows) == ["mixed-batch/0", "mixed-batch/2"]
    rejected = consumer.metrics.records.labels("rejected")._value.get()
    assert rejected == len(BAD_BODIES) + 1


@pytest.mark.timeout(120)
def test_rpc_client_many_concurrent_callers_get_their_own_answers(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(batch_timeout_ms=5)
    rng = np.random.default_rng(7)
    records = [
        good(int(i))
        | {"LIMIT_BAL": int(rng.integers(10, 500)) * 1000, "PAY_0": int(rng.integers(-2, 4))}
        for i in range(200)
    ]
    scorer = OnnxScorer.from_settings(settings)
    features = np.array(
        [[r[name] for name in r if name != "ID"] for r in records], dtype=np.float32
    )
    expected = scorer.predict_default_probability(features)
    with running_consumer(settings), PredictionClient(settings) as client:
        with ThreadPoolExecutor(max_workers=16) as pool:
            replies = list(pool.map(lambda r: client.predict(r, timeout=30), records))
        batch_reply = client.submit([good("b0"), {**good("b1"), "SEX": 5}]).result(timeout=30)
        with pytest.raises(PredictionError, match="out-of-range"):
            client.predict({**good("bad"), "MARRIAGE": 9}, timeout=30)
    assert [reply["record_id"] for reply in replies] == [r["ID"] for r in records]
    got = np.array([reply["probability"] for reply in replies])
    assert np.max(np.abs(got - expected)) < 1e-6
    assert batch_reply[0]["record_id"] == "b0"
    assert batch_reply[1]["error"] == RejectReason.RANGE


class FailsOnRecord:
    """A scorer that breaks (a non-input failure) whenever a given record is in the batch."""

    def __init__(self, inner: OnnxScorer, poison_limit_bal: int) -> None:
        self.inner, self.poison = inner, poison_limit_bal
        self.version, self.threshold = inner.version, inner.threshold
        self.failures = 0

    def predict_default_probability(self, features: np.ndarray) -> np.ndarray:
        if (features[:, 0] == self.poison).any():
            self.failures += 1
            raise RuntimeError("simulated model failure")
        return self.inner.predict_default_probability(features)


@pytest.mark.timeout(120)
def test_message_failing_for_a_non_input_reason_stops_at_the_delivery_limit(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(delivery_limit=3, batch_timeout_ms=50, retry_delay_ms=200)
    scorer = FailsOnRecord(OnnxScorer.from_settings(settings), poison_limit_bal=777_000)
    store = ResultsStore.from_settings(settings)
    consumer = Consumer(settings, scorer, store)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: consumer.health.broker_connected, timeout=20, message="consumer up")
        publish(settings, json.dumps([good(1), good(2)]).encode(), message_id="mates")
        publish(
            settings, json.dumps({**good(3), "LIMIT_BAL": 777_000}).encode(), message_id="poison"
        )
        publish(settings, json.dumps(good(4)).encode(), message_id="after")
        dead = drain_dead_letters(settings, expected=1, timeout=30)
        wait_until(lambda: len(stored_rows(settings)) >= 3, timeout=20, message="mates stored")
    finally:
        consumer.request_stop()
        thread.join(timeout=30)
        store.dispose()
    assert len(dead) == 1
    headers, body = dead[0]
    assert json.loads(body)["ID"] == 3
    assert headers[REASON_HEADER] == "scoring-failed"
    # `delivery_limit` attempts, spaced by the retry queue, then dead-lettered: no endless loop.
    assert scorer.failures <= 2 * settings.delivery_limit
    assert sorted(record_id for _, record_id, _ in stored_rows(settings)) == ["1", "2", "4"]
    assert consumer.metrics.scoring_failures._value.get() == settings.delivery_limit
    assert consumer.metrics.retried._value.get() == settings.delivery_limit - 1
