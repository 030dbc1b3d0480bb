"""The scoring consumer: micro-batched ONNX inference between RabbitMQ and the results store.

Failure rules (tested in tests/integration and tests/faults):
- ack only after the batch's results are committed to the store (basic_ack multiple=True);
- a bad record is dead-lettered alone with a reason; its batch-mates are still scored;
- a scoring failure is isolated to the message(s) causing it, which are requeued so the quorum
  queue's delivery limit ends a message that keeps failing (no infinite loop);
- a store outage keeps the batch in hand (unacked, not requeued) and retries with backoff;
- a broker outage drops the batch in hand (the broker redelivers it) and reconnects with backoff;
- SIGTERM stops new deliveries, finishes and acks what was delivered, and exits 0.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions
from sqlalchemy.exc import SQLAlchemyError

from creditstream.batcher import MicroBatch, PendingMessage, Prediction, reply_body
from creditstream.broker import BROKER_DOWN_ERRORS, ConnectInterrupted, connect
from creditstream.codec import Rejection, decode_request, encode_json
from creditstream.metrics import ConsumerMetrics, HealthServer, HealthState
from creditstream.topology import (
    DETAIL_HEADER,
    INDEX_HEADER,
    REASON_HEADER,
    SENT_AT_HEADER,
    SOURCE_HEADER,
    Topology,
    TopologyMismatchError,
)

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel

    from creditstream.scoring import Scorer
    from creditstream.settings import Settings
    from creditstream.store import ResultsStore

log = logging.getLogger(__name__)

_IDLE_TICK_S = 0.25
_JSON = "application/json"


class _BrokerLost(Exception):
    """The connection to the broker went away mid-serve."""


class Consumer:
    """Consumes requests, scores them in micro-batches and stores + publishes predictions."""

    def __init__(
        self,
        settings: Settings,
        scorer: Scorer,
        store: ResultsStore,
        metrics: ConsumerMetrics | None = None,
        health: HealthState | None = None,
    ) -> None:
        self.settings = settings
        self.topology = Topology.from_settings(settings)
        self.scorer = scorer
        self.store = store
        self.metrics = metrics or ConsumerMetrics()
        self.health = health or HealthState()
        self.health.model_loaded = True
        self._stop = threading.Event()
        self._timeout_s = settings.batch_timeout_ms / 1000.0
        self._max_body_bytes = settings.max_body_bytes
        self._max_records = settings.max_records_per_message
        self._last_delivery = time.monotonic()
        self.records_stored = 0

    # --- lifecycle ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to drain and exit (signal-handler safe)."""
        self._stop.set()

    def run(self) -> int:
        """Serve until stopped or idle; reconnect with backoff when the broker goes away."""
        delay, attempts, first = 0.2, 0, True
        while not self._stop.is_set():
            try:
                connection = connect(
                    self.settings,
                    name="creditstream-consumer",
                    wait_s=self.settings.broker_wait_s if first else 0,
                    stop=self._stop,
                )
            except ConnectInterrupted:
                break  # stopped (SIGTERM) while waiting for the broker: nothing in hand
            except BROKER_DOWN_ERRORS as exc:
                attempts += 1
                limit = self.settings.reconnect_attempts
                if first or (limit and attempts >= limit):
                    log.error("broker unreachable, giving up: %s", exc)
                    return 2
                log.warning("broker unreachable (%s); retrying in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.settings.reconnect_max_s)
                continue
            if not first:
                self.metrics.reconnects.inc()
                log.info("reconnected to the broker")
            first, delay, attempts = False, 0.2, 0
            try:
                finished = self._serve(connection)
            except TopologyMismatchError as exc:
                log.error("%s", exc)
                return 2
            except _BrokerLost as exc:
                log.warning("lost the broker connection: %s", exc)
                finished = False
            finally:
                self.health.broker_connected = False
                _close_quietly(connection)
            if finished:
                break
        log.info("consumer stopped; %d records stored this run", self.records_stored)
        return 0

    # --- the loop -------------------------------------------------------------------------
    def _serve(self, connection: pika.BlockingConnection) -> bool:
        """Consume on one connection. True: finished (stop or idle); False: reconnect."""
        try:
            channel = connection.channel()
            self.topology.declare(channel)
            channel.basic_qos(prefetch_count=self.settings.prefetch)
            publisher = connection.channel()
            publisher.confirm_delivery()
            inbox: deque[tuple[Any, Any, bytes]] = deque()
            consumer_tag = channel.basic_consume(
                self.topology.requests_queue,
                on_message_callback=lambda _ch, method, props, body: inbox.append(
                    (method, props, body)
                ),
            )
        except BROKER_DOWN_ERRORS as exc:
            raise _BrokerLost(exc) from exc
        self.health.broker_connected = True
        self._last_delivery = time.monotonic()
        batch = MicroBatch(self.settings.batch_size)
        cancelled = False
        log.info(
            "consuming %s (batch %d, timeout %d ms, prefetch %d)",
            self.topology.requests_queue,
            self.settings.batch_size,
            self.settings.batch_timeout_ms,
            self.settings.prefetch,
        )
        try:
            while True:
                self.health.beat()
                if not cancelled and (self._stop.is_set() or self._idle_expired(batch)):
                    # NOTE: dispatch what already arrived, then cancel: pika requeues only
                    # deliveries still undispatched, and we finish everything we hold.
                    connection.process_data_events(time_limit=0)
                    channel.basic_cancel(consumer_tag)
                    cancelled = True
                    self.health.draining = True
                got_new = bool(inbox)
                while inbox:
                    method, props, body = inbox.popleft()
                    self._accept(channel, publisher, batch, method, props, body)
                    if batch.is_full:
                        self._flush(channel, publisher, batch)
                        batch = MicroBatch(self.settings.batch_size)
                if batch and (not got_new or batch.is_due(time.monotonic(), self._timeout_s)):
                    # NOTE: nothing more is waiting on the socket (or the oldest record has
                    # waited T ms): flush now rather than hold latency for a fuller batch.
                    self._flush(channel, publisher, batch)
                    batch = MicroBatch(self.settings.batch_size)
                if cancelled and not inbox and not batch:
                    channel.close()
                    return True
                connection.process_data_events(time_limit=0 if batch or inbox else _IDLE_TICK_S)
        except BROKER_DOWN_ERRORS as exc:
            raise _BrokerLost(exc) from exc

    def _idle_expired(self, batch: MicroBatch) -> bool:
        limit = self.settings.exit_when_idle_s
        return limit is not None and not batch and time.monotonic() - self._last_delivery >= limit

    # --- per message ----------------------------------------------------------------------
    def _accept(
        self,
        channel: BlockingChannel,
        publisher: BlockingChannel,
        batch: MicroBatch,
        method: Any,
        props: pika.BasicProperties,
        body: bytes,
    ) -> None:
        now = self._last_delivery = time.monotonic()
        if method.redelivered:
            self.metrics.redelivered.inc()
        message_id = props.message_id or "sha256:" + hashlib.sha256(body).hexdigest()[:40]
        decoded = decode_request(
            body,
            props.content_type,
            max_body_bytes=self._max_body_bytes,
            max_records=self._max_records,
        )
        for rejection in decoded.rejections:
            self._dead_letter(publisher, message_id, body, rejection)
        headers = props.headers or {}
        sent_at = headers.get(SENT_AT_HEADER)
        message = PendingMessage(
            delivery_tag=method.delivery_tag,
            message_id=message_id,
            records=decoded.records,
            rejections=decoded.rejections,
            is_batch=decoded.is_batch,
            received_at=time.time(),
            sent_at=sent_at / 1e6
            if isinstance(sent_at, int) and not isinstance(sent_at, bool)
            else None,
            reply_to=props.reply_to,
            correlation_id=props.correlation_id,
            redelivered=bool(method.redelivered),
        )
        if message.records:
            batch.add(message, now)
            return
        self.metrics.messages.inc()
        # Nothing to score: every record was dead-lettered (and confirmed) already.
        if message.reply_to:
            self._reply(channel, message, [])
        channel.basic_ack(method.delivery_tag)

    def _dead_letter(
        self, publisher: BlockingChannel, message_id: str, body: bytes, rejection: Rejection
    ) -> None:
        payload = body if rejection.index is None else _encode_raw(rejection.raw, body)
        headers: dict[str, Any] = {
            REASON_HEADER: rejection.reason,
            DETAIL_HEADER: rejection.detail[:500],
            SOURCE_HEADER: message_id,
        }
        if rejection.index is not None:
            headers[INDEX_HEADER] = rejection.index
        # NOTE: confirmed publish: the original is acked only after the dead letter is safe.
        publisher.basic_publish(
            self.topology.dead_letter_exchange,
            self.topology.dead_letter_queue,
            payload,
            pika.BasicProperties(
                content_type=_JSON,
                delivery_mode=2,
                headers=headers,
                message_id=f"{message_id}#dead{rejection.index or 0}",
            ),
        )
        self.metrics.dead_lettered.labels(rejection.reason).inc()
        self.metrics.records.labels("rejected").inc()
        log.warning(
            "dead-lettered %s record %s: %s (%s)",
            message_id,
            rejection.index,
            rejection.reason,
            rejection.detail[:200],
        )

    # --- per batch ------------------------------------------------------------------------
    def _flush(
        self, channel: BlockingChannel, publisher: BlockingChannel, batch: MicroBatch
    ) -> None:
        scored, failed = self._score(batch)
        for message in failed:
            # NOTE: requeue: the quorum queue counts it; past the delivery limit the broker
            # dead-letters it, so a message that always fails cannot loop forever.
            channel.basic_nack(message.delivery_tag, requeue=True)
        if not scored:
            return
        predictions = [p for _, per_message in scored for p in per_message]
        inserted = self._store_with_retry(channel, scored, predictions)
        if inserted is None:
            return  # stopping during a store outage: batch requeued
        duplicates = len(predictions) - inserted
        if duplicates:
            self.metrics.duplicates.inc(duplicates)
            log.info("%d records of this batch were already stored (redelivery)", duplicates)
        publisher.basic_publish(
            self.topology.predictions_exchange,
            "",
            encode_json([p.as_event() for p in predictions]),
            pika.BasicProperties(
                content_type=_JSON,
                delivery_mode=2,
                message_id=f"predictions-{uuid.uuid4().hex}",
                headers={
                    "x-creditstream-model-version": self.scorer.version,
                    "x-creditstream-records": len(predictions),
                },
            ),
        )
        for message, per_message in scored:
            if message.reply_to:
                self._reply(channel, message, per_message)
        channel.basic_ack(max(m.delivery_tag for m, _ in scored), multiple=True)
        done = time.time()
        for message, _ in scored:
            if message.sent_at is not None:
                self.metrics.end_to_end_seconds.observe(max(0.0, done - message.sent_at))
        self.metrics.records.labels("scored").inc(len(predictions))
        self.metrics.messages.inc(len(scored))
        self.records_stored += inserted

    def _score(
        self, batch: MicroBatch
    ) -> tuple[list[tuple[PendingMessage, list[Prediction]]], list[PendingMessage]]:
        """Score the batch in one ONNX call; on failure, isolate the failing message(s)."""
        started = time.perf_counter()
        try:
            probabilities = self.scorer.predict_default_probability(batch.features())
        except Exception:
            log.exception("scoring a batch of %d records failed; isolating", batch.n_records)
            return self._score_one_by_one(batch)
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        self.metrics.batches.inc()
        self.metrics.batch_size.observe(batch.n_records)
        per_message = batch.predictions(
            probabilities,
            threshold=self.scorer.threshold,
            model_version=self.scorer.version,
            scored_at=time.time(),
        )
        return list(zip(batch.messages, per_message, strict=True)), []

    def _score_one_by_one(
        self, batch: MicroBatch
    ) -> tuple[list[tuple[PendingMessage, list[Prediction]]], list[PendingMessage]]:
        scored, failed = [], []
        for message in batch.messages:
            single = MicroBatch(batch.max_records)
            single.add(message, 0.0)
            try:
                probabilities = self.scorer.predict_default_probability(single.features())
                (predictions,) = single.predictions(
                    probabilities,
                    threshold=self.scorer.threshold,
                    model_version=self.scorer.version,
                    scored_at=time.time(),
                )
            except Exception as exc:  # noqa: BLE001
                self.metrics.scoring_failures.inc()
                log.error(
                    "scoring message %s failed (%s); requeued (delivery limit %d)",
                    message.message_id,
                    exc,
                    self.settings.delivery_limit,
                )
                failed.append(message)
            else:
                scored.append((message, predictions))
        return scored, failed

    def _store_with_retry(
        self,
        channel: BlockingChannel,
        scored: list[tuple[PendingMessage, list[Prediction]]],
        predictions: list[Prediction],
    ) -> int | None:
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                inserted = self.store.write(predictions)
            except SQLAlchemyError as exc:
                self.metrics.store_errors.inc()
                self.health.store_ok = False
                if self._stop.is_set():
                    for message, _ in scored:
                        channel.basic_nack(message.delivery_tag, requeue=True)
                    log.error(
                        "results store down while stopping; %d messages requeued", len(scored)
                    )
                    return None
                log.warning(
                    "results store unavailable (%s); batch held, retry in %.1fs",
                    str(exc).splitlines()[0][:200],
                    delay,
                )
                # NOTE: connection.sleep keeps heartbeats flowing while we hold the batch; the
                # beat keeps liveness green (a restart cannot fix the database), readiness is red.
                self.health.beat()
                channel.connection.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_max_s)
                continue
            self.metrics.store_seconds.observe(time.perf_counter() - started)
            if not self.health.store_ok:
                self.health.store_ok = True
            return inserted

    def _reply(
        self, channel: BlockingChannel, message: PendingMessage, predictions: list[Prediction]
    ) -> None:
        # NOTE: replies are unconfirmed: the reply queue is the caller's and transient;
        # the durable copy of every prediction is the results store.
        channel.basic_publish(
            "",
            message.reply_to or "",
            encode_json(reply_body(message, predictions)),
            pika.BasicProperties(content_type=_JSON, correlation_id=message.correlation_id),
        )


def _encode_raw(raw: Any, fallback: bytes) -> bytes:
    try:
        return encode_json(raw)
    except (TypeError, ValueError):
        return fallback


def _close_quietly(connection: pika.BlockingConnection) -> None:
    try:
        if connection.is_open:
            connection.close()
    except Exception:
        log.debug("ignoring error while closing the connection", exc_info=True)


def run_consumer(settings: Settings) -> int:
    """Build the consumer from settings, serve, and return the process exit code."""
    from creditstream.scoring import ModelError, OnnxScorer
    from creditstream.store import ResultsStore

    metrics, health = ConsumerMetrics(), HealthState()
    server = None
    if settings.http_port:
        server = HealthServer.from_settings(settings, health, metrics).start()
        log.info("health and metrics on %s:%d", server.host, server.port)
    try:
        scorer = OnnxScorer.from_settings(settings)
    except ModelError as exc:
        log.error("%s", exc)
        return 2
    store = ResultsStore.from_settings(settings)
    try:
        store.create_schema()
        health.store_ok = True
    except SQLAlchemyError as exc:
        log.warning(
            "results store not reachable at start (%s); will retry per batch",
            str(exc).splitlines()[0][:200],
        )
    consumer = Consumer(settings, scorer, store, metrics, health)

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        consumer.request_stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        return consumer.run()
    finally:
        store.dispose()
        if server is not None:
            server.stop()
