"""The broker takes things away under a running consumer: it reconnects instead of idling or
dying (issue 9: cancel notifications, ChannelClosedByBroker after the commit)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import pika
import pytest
from sqlalchemy.exc import OperationalError

from creditstream.consumer import Consumer
from creditstream.metrics import ConsumerMetrics, HealthState
from creditstream.scoring import OnnxScorer
from creditstream.settings import Settings
from creditstream.store import ResultsStore
from creditstream.topology import ATTEMPT_HEADER, REASON_HEADER, REQUEST_ROUTING_KEY, Topology
from tests.helpers import AMQP_URL, free_port, ready_in_queue, stored_rows, wait_until
from tests.integration.test_bad_input_and_rpc import drain_dead_letters, publish
from tests.settlement_rules import POISON_LIMIT_BAL, FlakyScorer, good

pytestmark = pytest.mark.integration


def _admin(action: Callable[[pika.adapters.blocking_connection.BlockingChannel], None]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        action(connection.channel())
    finally:
        connection.close()


def _admin_result(action: Callable[[Any], Any]) -> Any:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        return action(connection.channel())
    finally:
        connection.close()


class _Running:
    def __init__(self, settings: Settings) -> None:
        self.store = ResultsStore.from_settings(settings)
        self.health = HealthState()
        self.consumer = Consumer(
            settings, OnnxScorer.from_settings(settings), self.store, ConsumerMetrics(), self.health
        )
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.consumer.run()
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def __enter__(self) -> _Running:
        self.thread.start()
        wait_until(lambda: self.health.broker_connected, timeout=20, message="consumer up")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.consumer.request_stop()
        self.thread.join(timeout=30)
        self.store.dispose()


@pytest.mark.timeout(90)
def test_a_cancelled_subscription_turns_readiness_red_and_reconnects(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(reconnect_max_s=0.5)
    with _Running(settings) as running:
        seen_not_ready, done = threading.Event(), threading.Event()

        def watch() -> None:
            while running.thread.is_alive() and not done.is_set():
                if not running.health.ready:
                    seen_not_ready.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # The queue goes away (an operator, a failover): the broker cancels the subscription.
        _admin(lambda ch: ch.queue_delete(settings.requests_queue))
        wait_until(
            lambda: running.consumer.metrics.reconnects._value.get() >= 1,
            timeout=20,
            message="the consumer reconnects after the cancel",
        )
        publish(settings, json.dumps(good("after-cancel")).encode(), message_id="after-cancel")
        wait_until(lambda: len(stored_rows(settings)) == 1, timeout=20, message="stored")
        done.set()
        watcher.join(timeout=5)
        assert seen_not_ready.is_set(), "readiness went red while the subscription was gone"
        assert running.health.ready and not running.errors
    assert [r for _, r, _ in stored_rows(settings)] == ["after-cancel"]


@pytest.mark.timeout(90)
def test_channel_closed_by_the_broker_after_the_commit_reconnects_instead_of_crashing(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(reconnect_max_s=0.5)
    with _Running(settings) as running:
        # NOTE: dead letters normally go through the outbox (the relay re-declares a missing
        # exchange); when the database cannot take them they are published on the consumer's
        # own connection, which is what this test breaks.
        def refuse(_events: object) -> None:
            raise OperationalError("INSERT", None, ConnectionError("outbox unavailable"))

        running.store.enqueue = refuse  # type: ignore[method-assign]
        # The dead-letter exchange is gone: publishing the dead letter (after the good record
        # of the same message was committed) closes the channel with 404 NOT_FOUND.
        _admin(lambda ch: ch.exchange_delete(settings.dead_letter_exchange))
        body = json.dumps([good("kept"), {**good("bad"), "SEX": 9}]).encode()
        _admin(
            lambda ch: ch.basic_publish(
                settings.requests_exchange,
                REQUEST_ROUTING_KEY,
                body,
                pika.BasicProperties(content_type="application/json", message_id="mixed"),
            )
        )
        wait_until(
            lambda: running.consumer.metrics.reconnects._value.get() >= 1 or running.errors,
            timeout=20,
            message="a reconnect (or a crash)",
        )
        assert not running.errors, f"the consumer crashed: {running.errors!r}"
        dead = drain_dead_letters(settings, expected=1, timeout=20)
        assert running.thread.is_alive() and running.health.ready
    assert [h[REASON_HEADER] for h, _ in dead] == ["out-of-range"]
    assert [r for _, r, _ in stored_rows(settings)] == ["kept"]
    assert ready_in_queue(settings) == 0


def _dead_count(settings: Settings) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        frame = connection.channel().queue_declare(settings.dead_letter_queue, passive=True)
        return int(frame.method.message_count)
    finally:
        connection.close()


class _FailsForAWhile:
    """A model that fails every call for `seconds` after its first call (a short outage)."""

    def __init__(self, inner: OnnxScorer, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds
        self.version, self.threshold = inner.version, inner.threshold
        self.started: float | None = None
        self.failures = 0

    def predict_default_probability(self, features: Any) -> Any:
        now = time.monotonic()
        self.started = self.started if self.started is not None else now
        if now - self.started < self.seconds:
            self.failures += 1
            raise RuntimeError("model briefly unavailable")
        return self.inner.predict_default_probability(features)


@pytest.mark.timeout(90)
def test_a_two_second_model_fault_does_not_burn_the_delivery_limit(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(delivery_limit=5, retry_delay_ms=1000, batch_timeout_ms=20)
    store = ResultsStore.from_settings(settings)
    scorer = _FailsForAWhile(OnnxScorer.from_settings(settings), seconds=2.0)
    consumer = Consumer(settings, scorer, store)  # type: ignore[arg-type]
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: consumer.health.broker_connected, timeout=20, message="consumer up")
        for i in range(20):
            publish(settings, json.dumps(good(f"r{i}")).encode(), message_id=f"r{i}")
        wait_until(
            lambda: len(stored_rows(settings)) == 20 or _dead_count(settings) > 0,
            timeout=30,
            message="all stored (or something dead-lettered)",
        )
        dead = drain_dead_letters(settings, expected=1, timeout=1)
    finally:
        consumer.request_stop()
        thread.join(timeout=30)
        store.dispose()
    assert not dead, "nothing dead-lettered: the broker spaced the retries out"
    assert len(stored_rows(settings)) == 20
    # With a 1 s broker-side delay a 2 s fault costs each message at most ~3 attempts.
    assert consumer.metrics.scoring_failures._value.get() <= 20 * 3


class _Forwarder:
    """A TCP forwarder to the broker that a test can take away (refusing connections) and
    bring back on the same port: a broker outage for one consumer only."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._listener is not None:
            # NOTE: shutdown wakes the thread blocked in accept(); close alone would leave
            # the socket listening until that accept returned.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._sockets.clear()


@pytest.mark.timeout(90)
def test_liveness_stays_green_through_a_long_broker_outage(
    make_settings: Callable[..., Settings],
) -> None:
    url = urllib.parse.urlsplit(AMQP_URL)
    forwarder = _Forwarder((url.hostname or "127.0.0.1", url.port or 5672))
    forwarder.start()
    proxied = AMQP_URL.replace(f":{url.port or 5672}/", f":{forwarder.port}/")
    settings = make_settings(amqp_url=proxied, reconnect_max_s=0.5, heartbeat_s=2)
    store = ResultsStore.from_settings(settings)
    health = HealthState(stall_after_s=1.5)
    consumer = Consumer(
        settings, OnnxScorer.from_settings(settings), store, ConsumerMetrics(), health
    )
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: health.broker_connected, timeout=20, message="consumer up")
        forwarder.stop()  # the broker is gone for this consumer (refused, connections cut)
        wait_until(lambda: not health.broker_connected, timeout=20, message="outage seen")
        live = []
        deadline = time.monotonic() + 5.0  # more than three times the stall limit
        while time.monotonic() < deadline:
            live.append(health.live)
            time.sleep(0.1)
        assert not health.ready, "readiness is red while the broker is away"
        forwarder.start()
        wait_until(lambda: health.broker_connected, timeout=30, message="reconnected")
    finally:
        forwarder.stop()
        consumer.request_stop()
        thread.join(timeout=30)
        store.dispose()
    assert all(live), "liveness stayed green: a restart cannot bring the broker back"


@pytest.mark.timeout(90)
def test_a_retried_message_returns_to_this_queue_only(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(retry_delay_ms=200, batch_timeout_ms=20)
    tap = f"{settings.requests_queue}.tap"
    # Another queue bound to the requests exchange with the same key (a second deployment, an
    # audit tap): it must see each request once, not again after every retry.
    _admin(lambda ch: Topology.from_settings(settings).declare(ch))
    _admin(lambda ch: ch.queue_declare(tap, durable=False, auto_delete=False))
    _admin(
        lambda ch: ch.queue_bind(tap, settings.requests_exchange, routing_key=REQUEST_ROUTING_KEY)
    )
    try:
        store = ResultsStore.from_settings(settings)
        scorer = FlakyScorer(OnnxScorer.from_settings(settings), failures_left=2)
        consumer = Consumer(settings, scorer, store)  # type: ignore[arg-type]
        thread = threading.Thread(target=consumer.run, daemon=True)
        thread.start()
        try:
            wait_until(lambda: consumer.health.broker_connected, timeout=20, message="up")
            body = json.dumps(good("p", LIMIT_BAL=POISON_LIMIT_BAL)).encode()
            publish(settings, body, message_id="retried-once")
            wait_until(lambda: len(stored_rows(settings)) == 1, timeout=30, message="stored")
        finally:
            consumer.request_stop()
            thread.join(timeout=30)
            store.dispose()
        assert consumer.metrics.retried._value.get() == 1
        time.sleep(0.5)
        tapped = _admin_result(lambda ch: ch.queue_declare(tap, passive=True).method.message_count)
        assert tapped == 1, "the retry went back to the requests queue, not through the exchange"
    finally:
        _admin(lambda ch: ch.queue_delete(tap))


@pytest.mark.timeout(90)
def test_an_attempt_header_from_a_publisher_is_not_trusted(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(retry_delay_ms=200, batch_timeout_ms=20, delivery_limit=20)
    store = ResultsStore.from_settings(settings)
    scorer = FlakyScorer(OnnxScorer.from_settings(settings), failures_left=2)
    consumer = Consumer(settings, scorer, store)  # type: ignore[arg-type]
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: consumer.health.broker_connected, timeout=20, message="up")
        body = json.dumps(good("p", LIMIT_BAL=POISON_LIMIT_BAL)).encode()
        _admin(
            lambda ch: ch.basic_publish(
                settings.requests_exchange,
                REQUEST_ROUTING_KEY,
                body,
                pika.BasicProperties(
                    content_type="application/json",
                    message_id="claims-19-attempts",
                    headers={ATTEMPT_HEADER: 19},
                ),
            )
        )
        wait_until(lambda: len(stored_rows(settings)) == 1, timeout=20, message="stored")
    finally:
        consumer.request_stop()
        thread.join(timeout=30)
        store.dispose()
    assert _dead_count(settings) == 0, "one failure is one attempt, whatever the header says"


@pytest.mark.timeout(90)
def test_a_message_replayed_from_the_dead_letter_queue_survives_a_retry(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(retry_delay_ms=200, batch_timeout_ms=20)
    store = ResultsStore.from_settings(settings)
    scorer = FlakyScorer(OnnxScorer.from_settings(settings), failures_left=2)
    consumer = Consumer(settings, scorer, store)  # type: ignore[arg-type]
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: consumer.health.broker_connected, timeout=20, message="up")
        body = json.dumps(good("p", LIMIT_BAL=POISON_LIMIT_BAL)).encode()
        # As an operator's replay from the dead-letter queue leaves it: x-death names the
        # requests queue (it was dead-lettered there at the delivery limit once).
        death = {
            "queue": settings.requests_queue,
            "reason": "delivery_limit",
            "count": 1,
            "exchange": settings.requests_exchange,
            "routing-keys": [REQUEST_ROUTING_KEY],
        }
        _admin(
            lambda ch: ch.basic_publish(
                settings.requests_exchange,
                REQUEST_ROUTING_KEY,
                body,
                pika.BasicProperties(
                    content_type="application/json",
                    message_id="replayed",
                    headers={"x-death": [death]},
                ),
            )
        )
        wait_until(lambda: len(stored_rows(settings)) == 1, timeout=20, message="stored")
    finally:
        consumer.request_stop()
        thread.join(timeout=30)
        store.dispose()
    assert consumer.metrics.retried._value.get() == 1
