"""Dead letters on the real broker (issue 9): published once, at settlement; mandatory, so an
unroutable one is kept (the request stays unacked) until it can be routed; the requests queue
dead-letters at-least-once."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pika
import pytest
import requests

from creditstream.consumer import Consumer
from creditstream.metrics import ConsumerMetrics, HealthState
from creditstream.scoring import OnnxScorer
from creditstream.settings import Settings
from creditstream.store import ResultsStore
from creditstream.topology import REASON_HEADER, REQUEST_ROUTING_KEY, Topology
from tests.helpers import AMQP_URL, ready_in_queue, stored_rows, wait_until
from tests.integration.test_bad_input_and_rpc import drain_dead_letters, publish
from tests.settlement_rules import POISON_LIMIT_BAL, FlakyScorer, good

pytestmark = pytest.mark.integration


@contextmanager
def consumer_with(settings: Settings, scorer: Any = None) -> Iterator[Consumer]:
    store = ResultsStore.from_settings(settings)
    consumer = Consumer(
        settings,
        scorer or OnnxScorer.from_settings(settings),
        store,
        ConsumerMetrics(),
        HealthState(),
    )
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: consumer.health.broker_connected, timeout=20, message="consumer up")
        yield consumer
    finally:
        consumer.request_stop()
        thread.join(timeout=30)
        store.dispose()


def _channel_do(action: Callable[[Any], Any]) -> Any:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        return action(connection.channel())
    finally:
        connection.close()


@pytest.mark.timeout(90)
def test_a_bad_record_is_dead_lettered_once_although_its_message_is_delivered_three_times(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(retry_delay_ms=200, batch_timeout_ms=20)
    scorer = FlakyScorer(OnnxScorer.from_settings(settings), failures_left=4)
    with consumer_with(settings, scorer):
        body = [good("kept", LIMIT_BAL=POISON_LIMIT_BAL), {**good("bad"), "SEX": 9}]
        publish(settings, json.dumps(body).encode(), message_id="twice")
        wait_until(lambda: len(stored_rows(settings)) == 1, timeout=30, message="stored")
        time.sleep(0.5)
        dead = drain_dead_letters(settings, expected=10, timeout=1.5)
    assert scorer.failures == 4, "the message came back twice before it was scored"
    assert [h[REASON_HEADER] for h, _ in dead] == ["out-of-range"]


def _management() -> tuple[str, tuple[str, str]]:
    parts = urllib.parse.urlsplit(AMQP_URL)
    auth = (urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or ""))
    vhost = urllib.parse.quote(urllib.parse.unquote(parts.path[1:] or "/"), safe="")
    return f"http://{parts.hostname}:15672/api/queues/{vhost}", auth


@pytest.mark.timeout(90)
def test_an_unroutable_dead_letter_is_kept_until_it_can_be_routed(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(reconnect_max_s=0.5)
    with consumer_with(settings) as consumer:
        # Nothing bound to the dead-letter exchange: the dead letter cannot be routed.
        _channel_do(
            lambda ch: ch.queue_unbind(settings.dead_letter_queue, settings.dead_letter_exchange)
        )
        body = json.dumps({**good("bad"), "SEX": 9}).encode()
        _channel_do(  # NOTE: not publish(): it declares the topology (binding the queue again)
            lambda ch: ch.basic_publish(
                settings.requests_exchange,
                REQUEST_ROUTING_KEY,
                body,
                pika.BasicProperties(content_type="application/json", message_id="lonely"),
            )
        )
        time.sleep(2.0)

        def kept() -> bool:  # NOTE: the management API's figures lag by a few seconds
            base, auth = _management()
            quoted = urllib.parse.quote(settings.requests_queue, safe="")
            queue = requests.get(f"{base}/{quoted}", auth=auth, timeout=10).json()
            return queue.get("messages_unacknowledged", 0) + queue.get("messages_ready", 0) == 1

        wait_until(kept, timeout=15, interval=1, message="the request kept, not acked")
        assert not consumer.health.ready, "readiness is red while dead letters are returned"
        assert consumer.metrics.unroutable._value.get() >= 1
        _channel_do(
            lambda ch: ch.queue_bind(settings.dead_letter_queue, settings.dead_letter_exchange)
        )
        dead = drain_dead_letters(settings, expected=1, timeout=30)
        wait_until(lambda: consumer.health.broker_connected, timeout=20, message="serving")
    assert [h[REASON_HEADER] for h, _ in dead] == ["out-of-range"]


@pytest.mark.timeout(60)
def test_the_requests_queue_dead_letters_at_least_once(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    _channel_do(lambda ch: Topology.from_settings(settings).declare(ch))
    # The dead-letter queue cannot take it (unbound): at-most-once would drop the message.
    _channel_do(
        lambda ch: ch.queue_unbind(settings.dead_letter_queue, settings.dead_letter_exchange)
    )
    _channel_do(  # NOTE: not publish(): it declares the topology (binding the queue again)
        lambda ch: ch.basic_publish(
            settings.requests_exchange,
            REQUEST_ROUTING_KEY,
            json.dumps(good("kept")).encode(),
            pika.BasicProperties(content_type="application/json", delivery_mode=2),
        )
    )

    def reject(ch: Any) -> None:
        method = None
        deadline = time.monotonic() + 10
        while method is None and time.monotonic() < deadline:
            method, _props, _body = ch.basic_get(settings.requests_queue)
        assert method is not None
        ch.basic_nack(method.delivery_tag, requeue=False)  # dead-lettered by the broker

    _channel_do(reject)
    base, auth = _management()
    quoted = urllib.parse.quote(settings.requests_queue, safe="")

    def kept_for_dead_lettering() -> bool:  # NOTE: the management API's figures lag
        queue = requests.get(f"{base}/{quoted}", auth=auth, timeout=10).json()
        return int(queue.get("messages_dlx", 0)) == 1

    wait_until(kept_for_dead_lettering, timeout=20, interval=1, message="message kept (dlx)")


@pytest.mark.timeout(60)
def test_the_client_refuses_a_body_over_max_body_bytes_before_it_is_sent(
    make_settings: Callable[..., Settings],
) -> None:
    from creditstream.client import PredictionClient, PredictionError

    settings = make_settings(max_body_bytes=1024)
    _channel_do(lambda ch: Topology.from_settings(settings).declare(ch))
    with PredictionClient(settings) as client:
        with pytest.raises(PredictionError, match="max_body_bytes"):
            client.submit([good(f"r{i}") for i in range(10)])
        assert client.in_flight == 0
    time.sleep(0.5)
    assert ready_in_queue(settings) == 0, "nothing was published"


@pytest.mark.timeout(60)
def test_a_requests_queue_of_the_previous_version_keeps_serving_with_a_warning(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    topology = Topology.from_settings(settings)
    previous = {
        k: v
        for k, v in topology.requests_queue_arguments().items()
        if k not in ("x-dead-letter-strategy", "x-overflow")
    }
    _channel_do(
        lambda ch: ch.queue_declare(settings.requests_queue, durable=True, arguments=previous)
    )
    with consumer_with(settings) as consumer:
        publish(settings, json.dumps(good("upgraded")).encode(), message_id="upgraded")
        wait_until(lambda: len(stored_rows(settings)) == 1, timeout=20, message="stored")
        assert consumer.health.broker_connected
    assert "at-most-once" in caplog.text
