"""The scoring consumer: micro-batched ONNX inference between RabbitMQ and the results store.

Failure rules (tested in tests/integration and tests/faults):
- ack only after the batch's results are committed to the store (basic_ack multiple=True),
  and as soon as they are: the batch's prediction event is committed with it (outbox) and
  published later by the relay on its own connection (creditstream/outbox.py), so a memory
  alarm blocking publishers never holds the acks; replies go out through the relay too;
- a bad record is dead-lettered alone with a reason; its batch-mates are still scored;
- a scoring failure is isolated to the message(s) causing it, which are requeued so the quorum
  queue's delivery limit ends a message that keeps failing (no infinite loop);
- a store outage keeps the batch in hand (unacked, not requeued) and retries with backoff;
- a broker outage drops the batch in hand (the broker redelivers it) and reconnects with backoff;
- SIGTERM stops new deliveries, finishes and acks what was delivered, and exits 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import pika
import pika.exceptions
from sqlalchemy.exc import SQLAlchemyError

from creditstream.batcher import MicroBatch, PendingMessage, Prediction, reply_body
from creditstream.broker import (
    BROKER_DOWN_ERRORS,
    ConnectInterrupted,
    account_of,
    connect,
    interruptible_sleep,
)
from creditstream.codec import DecodedMessage, Rejection, decode_request, encode_json
from creditstream.deadletters import DeadLetterLimits, DeadLetterMessage, plan_dead_letters
from creditstream.guard import check_properties, install_header_guard, reply_allowed
from creditstream.metrics import ConsumerMetrics, HealthServer, HealthState
from creditstream.outbox import OutboxRelay
from creditstream.settlement import (
    NOT_STORED,
    STORE_REJECTED,
    Ack,
    Action,
    BatchOutcome,
    DeadLetter,
    Delivery,
    Hold,
    Policy,
    PublishPredictions,
    Reply,
    Requeue,
    Retry,
    Store,
    StoreErrorKind,
    StoreResult,
    bisect_refused,
    refused_by_delivery,
    settle,
)
from creditstream.store import OutboxEvent, classify_store_error, store_error_detail
from creditstream.topology import (
    ATTEMPT_HEADER,
    DETAIL_HEADER,
    PUBLISHER_HEADER,
    PUBLISHER_SIGNATURE_HEADER,
    REASON_HEADER,
    RESULT_SOURCE_HEADER,
    SENT_AT_HEADER,
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


# Errors of one channel or one publish (not the connection) that end the serve loop: the
# consumer reconnects instead of dying between the commit and the ack.
_CHANNEL_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPChannelError,
    pika.exceptions.ShortStringTooLong,
)


class _DeadLetterRefused(Exception):
    """The dead-letter queue nacked a dead letter (full: x-max-length-bytes, reject-publish)."""


class _BrokerLost(Exception):
    """The connection to the broker went away mid-serve."""


@dataclasses.dataclass(frozen=True)
class InputMode:
    """What the consumer's queue carries and where its results go (issue 11).

    The default is the fused path: request-contract records, results published and replied.
    A pipeline's score stage decodes engineered feature vectors instead; a shadow score stage
    also stores under its own ids and model version, and never publishes nor replies.
    """

    decode: Callable[[bytes, str | None, dict[str, Any]], DecodedMessage] | None = None
    id_suffix: str = ""
    publishes: bool = True
    replies: bool = True
    stage: str = ""  # NOTE: named in dead letters: `x-creditstream-reason: <stage>:<reason>`


class Consumer:
    """Consumes requests, scores them in micro-batches and stores + publishes predictions."""

    def __init__(
        self,
        settings: Settings,
        scorer: Scorer,
        store: ResultsStore,
        metrics: ConsumerMetrics | None = None,
        health: HealthState | None = None,
        relay: OutboxRelay | None = None,
        mode: InputMode | None = None,
    ) -> None:
        self.settings = settings
        self.mode = mode or InputMode()
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
        install_header_guard()
        self._account = ""  # the broker user this consumer connects as (set per connection)
        self._retry_key = retry_signing_key(settings.amqp_url.get_secret_value())
        self.policy = Policy(
            retry_delay_s=settings.retry_delay_ms / 1000.0,
            hold_max_s=settings.reconnect_max_s,
            delivery_limit=settings.delivery_limit,
        )
        # --- outbox (begin): events and replies leave through the relay's own connection ----
        self.relay = relay or OutboxRelay(settings, store, self.metrics, self.health)
        # --- outbox (end) ---

    # --- lifecycle ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to drain and exit (signal-handler safe)."""
        self._stop.set()

    def run(self) -> int:
        """Serve until stopped or idle; reconnect with backoff when the broker goes away."""
        self.relay.start()
        try:
            return self._run()
        finally:
            self.relay.stop()

    def _run(self) -> int:
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
                # NOTE: the loop is alive and retrying: liveness stays green (a restart
                # cannot bring the broker back; readiness is red). The sleep polls the stop
                # event rather than Event.wait: a signal handler setting the event while
                # this thread holds its lock would deadlock.
                self.health.beat()
                interruptible_sleep(self._stop)(delay)
                self.health.beat()
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
            settler = self._settler(channel, publisher)
            broker_cancelled = threading.Event()
            # NOTE: the broker cancels a subscription when the queue is deleted or its node
            # fails over; without this callback the loop would poll a dead subscription forever.
            channel.add_on_cancel_callback(lambda _frame: broker_cancelled.set())
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
                if broker_cancelled.is_set():
                    self.health.broker_connected = False
                    raise _BrokerLost("the broker cancelled the subscription (queue deleted?)")
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
                    settler.received(method.delivery_tag)
                    self._accept(batch, method, props, body)
                    if batch.is_full:
                        self._flush(settler, batch)
                        batch = MicroBatch(self.settings.batch_size)
                if batch and (not got_new or batch.is_due(time.monotonic(), self._timeout_s)):
                    # NOTE: nothing more is waiting on the socket (or the oldest record has
                    # waited T ms): flush now rather than hold latency for a fuller batch.
                    self._flush(settler, batch)
                    batch = MicroBatch(self.settings.batch_size)
                if cancelled and not inbox and not batch:
                    channel.close()
                    return True
                connection.process_data_events(time_limit=0 if batch or inbox else _IDLE_TICK_S)
        except (*BROKER_DOWN_ERRORS, *_CHANNEL_ERRORS) as exc:
            # NOTE: a channel closed by the broker, a nacked or returned publish, a property
            # too long to encode: the batch in hand is not acked; a new connection gets it
            # redelivered, and the store's idempotency makes the second pass harmless.
            raise _BrokerLost(f"{type(exc).__name__}: {exc}") from exc

    def _settler(self, channel: BlockingChannel, publisher: BlockingChannel) -> Settler:
        self._account = account_of(channel)
        return Settler(
            channel=channel,
            publisher=publisher,
            store=self.store,
            topology=self.topology,
            metrics=self.metrics,
            health=self.health,
            policy=self.policy,
            model_version=self.scorer.version,
            stop=self._stop,
            sleep=channel.connection.sleep,
            relay=self.relay,
            dead_letter_limits=DeadLetterLimits(
                self.settings.max_dead_letters_per_message,
                self.settings.dead_letter_excerpt_bytes,
            ),
            reply_to_prefixes=tuple(self.settings.reply_to_prefix_list),
            account=self._account,
            retry_key=self._retry_key,
            publishes=self.mode.publishes,
            stage=self.mode.stage,
        )

    def _idle_expired(self, batch: MicroBatch) -> bool:
        limit = self.settings.exit_when_idle_s
        return limit is not None and not batch and time.monotonic() - self._last_delivery >= limit

    # --- per message ----------------------------------------------------------------------
    def _accept(
        self, batch: MicroBatch, method: Any, props: pika.BasicProperties, body: bytes
    ) -> None:
        """Decode one delivery into the batch; nothing is published or settled here."""
        now = self._last_delivery = time.monotonic()
        if method.redelivered:
            self.metrics.redelivered.inc()
        refused = check_properties(props)
        message_id = (not refused and message_id_of(props.message_id, body)) or (
            "sha256:" + hashlib.sha256(body).hexdigest()[:40]
        )
        message_id += self.mode.id_suffix
        headers = props.headers or {}
        if refused:
            self.metrics.hostile_refused.labels("properties").inc()
            decoded = DecodedMessage(rejections=[refused])
        elif self.mode.decode is not None:
            decoded = self.mode.decode(body, props.content_type, headers)
        else:
            decoded = decode_request(
                body,
                props.content_type,
                max_body_bytes=self._max_body_bytes,
                max_records=self._max_records,
            )
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
            reply_to=props.reply_to if self.mode.replies else None,
            correlation_id=props.correlation_id,
            redelivered=bool(method.redelivered),
            body=body,
            attempt=_attempt(headers, self.topology.retry_queue),
            properties=props,
            publisher=_publisher(props, self._account, self._retry_key),
            source=str(headers.get(RESULT_SOURCE_HEADER, "live")),
        )
        batch.add(message, now)

    # --- per batch ------------------------------------------------------------------------
    def _flush(self, settler: Settler, batch: MicroBatch) -> None:
        scored, failed = self._score(batch) if batch.n_records else ([], [])
        predictions = {message.delivery_tag: per_message for message, per_message in scored}
        before = settler.records_stored
        settler.settle_batch(batch.messages, predictions, {m.delivery_tag for m in failed})
        self.records_stored += settler.records_stored - before

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
            if not message.records:
                continue
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
                    "scoring message %s failed (%s); returned for a later attempt "
                    "(attempt %d, delivery limit %d)",
                    message.message_id,
                    exc,
                    message.attempt + 1,
                    self.settings.delivery_limit,
                )
                failed.append(message)
            else:
                scored.append((message, predictions))
        return scored, failed


class Settler:
    """Executes the settlement policy's actions on a batch (the only I/O of settlement).

    `channel` is the channel the deliveries came on (ack, nack, replies); `publisher` a
    confirmed channel for dead letters and prediction events. Both are pika BlockingChannels in
    the consumer and fakes in unit tests.
    """

    def __init__(
        self,
        *,
        channel: Any,
        publisher: Any,
        store: ResultsStore,
        topology: Topology,
        metrics: ConsumerMetrics,
        health: HealthState,
        policy: Policy,
        model_version: str,
        stop: threading.Event,
        sleep: Callable[[float], None],
        relay: OutboxRelay,
        dead_letter_limits: DeadLetterLimits | None = None,
        reply_to_prefixes: tuple[str, ...] = (),
        account: str = "",
        retry_key: bytes = b"",
        publishes: bool = True,
        stage: str = "",
    ) -> None:
        self.channel, self.publisher = channel, publisher
        self.relay = relay
        self.dead_letter_limits = dead_letter_limits or DeadLetterLimits(100, 65_536)
        self.reply_to_prefixes, self.account = reply_to_prefixes, account
        self.retry_key = retry_key
        self.publishes, self.stage = publishes, stage
        self.store, self.topology = store, topology
        self.metrics, self.health = metrics, health
        self.policy, self.model_version = policy, model_version
        self.stop, self.sleep = stop, sleep
        self.records_stored = 0
        self._unsettled: set[int] = set()

    def received(self, tag: int) -> None:
        """A delivery arrived on the channel (and is not settled until an action says so)."""
        self._unsettled.add(tag)

    def settle_batch(
        self,
        messages: list[PendingMessage],
        predictions: dict[int, list[Prediction]],
        scoring_failed: set[int],
    ) -> None:
        """Run the policy to the end for one batch: store (bisecting, holding), then settle."""
        by_tag = {m.delivery_tag: m for m in messages}
        deliveries = tuple(
            Delivery(
                tag=m.delivery_tag,
                message_id=m.message_id,
                n_records=len(m.records),
                rejections=tuple(m.rejections),
                reply_to=m.reply_to,
                attempt=m.attempt,
            )
            for m in messages
        )
        result = NOT_STORED
        while True:
            outcome = BatchOutcome(
                deliveries, frozenset(scoring_failed), result, stopping=self.stop.is_set()
            )
            actions = settle(outcome, self.policy)
            first = actions[0] if actions else None
            if isinstance(first, Store):
                result = self._store(first, by_tag, predictions, result.failures)
                continue
            if isinstance(first, Hold):
                log.warning(
                    "results store unavailable (%s); batch held, retry in %.1fs",
                    first.reason,
                    first.delay_s,
                )
                # NOTE: the sleep keeps heartbeats flowing while we hold the batch; the beat
                # keeps liveness green (a restart cannot fix the database), readiness is red.
                self.health.beat()
                self.sleep(first.delay_s)
                result = StoreResult(failures=result.failures)
                continue
            self.execute(actions, by_tag, predictions, result)
            return

    def _store(
        self,
        action: Store,
        by_tag: dict[int, PendingMessage],
        predictions: dict[int, list[Prediction]],
        failures: int,
    ) -> StoreResult:
        rows = [(tag, i) for tag in action.tags for i in range(len(predictions[tag]))]
        started = time.perf_counter()
        try:
            inserted, refused = bisect_refused(
                lambda part: self.store.write(
                    [predictions[tag][i] for tag, i in part],
                    self._event_of if self.publishes else None,
                ),
                rows,
                lambda exc: classify_store_error(exc) is StoreErrorKind.PERMANENT,
            )
        except Exception as exc:  # noqa: BLE001 - classified: permanent ones never get here
            self.metrics.store_errors.inc()
            self.health.store_ok = False
            return StoreResult(transient=store_error_detail(exc), failures=failures + 1)
        if refused:
            # NOTE: before blaming the records, ask whether the database takes an ordinary
            # row at all (a probe, rolled back): a new constraint or trigger refuses every row,
            # and is an outage to hold (readiness red), not good traffic to dead-letter.
            try:
                self.store.probe()
            except Exception as exc:  # noqa: BLE001 - any failure of the probe: hold
                self.metrics.store_errors.inc()
                self.health.store_ok = False
                return StoreResult(
                    transient=f"the store refuses an ordinary row too ({store_error_detail(exc)})",
                    failures=failures + 1,
                )
            # NOTE: the probe passed: the refused records get one more try each, so a
            # constraint removed between the bisect and the probe does not cost them.
            still: list[tuple[int, Exception]] = []
            try:
                for position, _error in refused:
                    (tag, i) = rows[position]
                    added, again = bisect_refused(
                        lambda part: self.store.write([predictions[t][j] for t, j in part]),
                        [(tag, i)],
                        lambda exc: classify_store_error(exc) is StoreErrorKind.PERMANENT,
                    )
                    inserted += added
                    still.extend((position, e) for _, e in again)
            except Exception as exc:  # noqa: BLE001 - classified: permanent ones never get here
                self.metrics.store_errors.inc()
                self.health.store_ok = False
                return StoreResult(transient=store_error_detail(exc), failures=failures + 1)
            refused = still
        self.metrics.store_seconds.observe(time.perf_counter() - started)
        self.health.store_ok = True
        if refused:
            self.metrics.store_errors.inc(len(refused))
        stored = len(rows) - len(refused)
        duplicates = stored - inserted
        if duplicates:
            self.metrics.duplicates.inc(duplicates)
            log.info("%d records of this batch were already stored (redelivery)", duplicates)
        self.records_stored += inserted
        pairs = []
        for position, error in refused:
            tag, i = rows[position]
            message = by_tag[tag]
            record = message.records[i]
            pairs.append(
                (
                    tag,
                    Rejection(
                        STORE_REJECTED,
                        f"the results store refused the record: {store_error_detail(error)}",
                        record.index,
                        _raw_record(message, record.index),
                    ),
                )
            )
        return StoreResult(committed=True, refused=refused_by_delivery(pairs))

    def execute(
        self,
        actions: list[Action],
        by_tag: dict[int, PendingMessage],
        predictions: dict[int, list[Prediction]],
        result: StoreResult,
    ) -> None:
        """Publish, reply and settle as the actions say, in their order."""
        refused_index = {
            tag: {r.index for r in rejections} for tag, rejections in result.refused.items()
        }

        def kept(tag: int) -> list[Prediction]:
            gone = refused_index.get(tag, set())
            message = by_tag[tag]
            return [
                p
                for record, p in zip(message.records, predictions.get(tag, []), strict=False)
                if record.index not in gone
            ]

        # NOTE: a message's dead letters are planned together (creditstream.deadletters): at
        # most one per rejected record, each bounded; past the bound, the message once, whole.
        rejected: dict[int, list[Rejection]] = {}
        for action in actions:
            if isinstance(action, DeadLetter):
                rejected.setdefault(action.tag, []).append(action.rejection)
        letters: dict[int, list[DeadLetterMessage]] = {
            tag: self._staged(
                plan_dead_letters(
                    by_tag[tag].message_id,
                    by_tag[tag].body,
                    rejections,
                    is_batch=by_tag[tag].is_batch,
                    limits=self.dead_letter_limits,
                )
            )
            for tag, rejections in rejected.items()
        }
        # --- outbox (begin): dead letters are committed to the outbox before the ack and
        # published by the relay: a publish on this connection during a memory alarm would
        # block it, and every ack with it. A full dead-letter queue then makes the relay keep
        # the row and retry (the request is acked: its dead letters are safe in the store).
        in_outbox = self._dead_letters_to_outbox(letters, by_tag)
        # --- outbox (end) ---
        requeued: set[int] = set()
        for action in actions:
            tag = getattr(action, "tag", None)
            if tag in requeued:
                continue
            if isinstance(action, DeadLetter):
                planned = letters.pop(action.tag, None)
                if planned is not None:
                    message = by_tag[action.tag]
                    try:
                        for letter in planned:
                            self._dead_letter(message, letter, in_outbox=in_outbox)
                    except _DeadLetterRefused:
                        # NOTE: (direct publish only) the dead-letter queue is full: requeue
                        # this message only (its delivery limit ends the retries; the requests
                        # queue dead-letters at-least-once, so the broker keeps it until there
                        # is room) and keep serving the others: a full queue must not stall
                        # every consumer.
                        self.channel.basic_nack(action.tag, requeue=True)
                        self._unsettled.discard(action.tag)
                        requeued.add(action.tag)
                        self.metrics.hostile_refused.labels("dead-letter-queue-full").inc()
                        log.error("dead-letter queue full: %s requeued", message.message_id[:200])
            elif isinstance(action, Ack) and requeued:
                tags = tuple(t for t in action.tags if t not in requeued)
                if tags:
                    self._ack(tags, by_tag)
            elif isinstance(action, PublishPredictions):
                # NOTE: not for a message requeued above: it is published when it settles.
                self._publish_predictions(
                    [p for tag in action.tags if tag not in requeued for p in kept(tag)]
                )
            elif isinstance(action, Reply):
                self._reply(by_tag[action.tag], kept(action.tag), result)
            elif isinstance(action, Ack):
                self._ack(action.tags, by_tag)
            elif isinstance(action, Retry):
                self._retry(by_tag[action.tag], action)
            elif isinstance(action, Requeue):
                self.channel.basic_nack(action.tag, requeue=True)
                self._unsettled.discard(action.tag)
                log.error("results store down while stopping; message %d requeued", action.tag)

    def _retry(self, message: PendingMessage, action: Retry) -> None:
        # NOTE: the copy waits in the retry queue (TTL enforced by the broker), then the
        # broker dead-letters it back to the requests exchange. Confirmed before the original
        # is acked: a crash in between leaves two copies, which the idempotent store absorbs.
        props = message.properties or pika.BasicProperties()
        headers = {
            **(props.headers or {}),
            ATTEMPT_HEADER: action.attempt,
            # NOTE: the copy is published as this consumer's account (RabbitMQ checks
            # user_id); the original publisher rides in a header trusted only on copies
            # this account published (see _publisher).
            PUBLISHER_HEADER: message.publisher,
            PUBLISHER_SIGNATURE_HEADER: sign_publisher(
                self.retry_key, message.message_id, message.publisher
            ),
        }
        headers.pop("x-delivery-count", None)
        # NOTE: x-death keeps only the retry queue's own entries (they make the attempt
        # header trusted, _attempt). An entry naming the requests queue (a message replayed
        # from the dead-letter queue) would make the broker take the way back for a
        # dead-letter cycle and drop the copy silently.
        deaths = headers.pop("x-death", None)
        retry_queue = self.topology.retry_queue
        if isinstance(deaths, list):
            own = [
                d
                for d in deaths
                if isinstance(d, dict) and d.get("queue") in (retry_queue, retry_queue.encode())
            ]
            if own:
                headers["x-death"] = own
        self.publisher.basic_publish(
            "",
            self.topology.retry_queue,
            message.body,
            pika.BasicProperties(
                content_type=props.content_type,
                content_encoding=props.content_encoding,
                delivery_mode=2,
                priority=props.priority,
                message_id=props.message_id,
                correlation_id=props.correlation_id,
                reply_to=props.reply_to,
                timestamp=props.timestamp,
                type=props.type,
                app_id=props.app_id,
                headers=headers,
                # NOTE: user_id is this consumer's account (the broker refuses another); the
                # original publisher rides in the signed header. No expiration (the retry
                # queue's TTL is the delay).
                user_id=self.account or None,
            ),
            mandatory=True,
        )
        self.channel.basic_ack(action.tag)
        self._unsettled.discard(action.tag)
        self.metrics.retried.inc()
        log.warning(
            "message %s returns in %.1fs (attempt %d of %d)",
            message.message_id[:200],
            action.delay_s,
            action.attempt + 1,
            self.policy.delivery_limit,
        )

    def _ack(self, tags: tuple[int, ...], by_tag: dict[int, PendingMessage]) -> None:
        highest = max(tags)
        settled = set(tags)
        if all(tag in settled for tag in self._unsettled if tag <= highest):
            self.channel.basic_ack(highest, multiple=True)
        else:
            for tag in tags:
                self.channel.basic_ack(tag)
        self._unsettled -= settled
        done = time.time()
        n_records = 0
        for tag in tags:
            message = by_tag[tag]
            n_records += len(message.records)
            if message.sent_at is not None and message.records:
                self.metrics.end_to_end_seconds.observe(max(0.0, done - message.sent_at))
        self.metrics.messages.inc(len(tags))

    # --- outbox (begin) ---
    def _dead_letters_to_outbox(
        self, letters: dict[int, list[DeadLetterMessage]], by_tag: dict[int, PendingMessage]
    ) -> bool:
        """Commit the batch's planned dead letters to the outbox; False: publish them directly.

        NOTE: a store without an outbox (the unit tests' in-memory one) or a database that
        cannot take them now (outage, a value it refuses) falls back to the confirmed publish
        on this connection: a dead letter must be safe before its delivery is acked.
        """
        enqueue = getattr(self.store, "enqueue", None)
        if not any(letters.values()) or enqueue is None:
            return False
        events = []
        for planned in letters.values():
            for letter in planned:
                message_id = _short_id(letter.message_id)
                events.append(
                    OutboxEvent(
                        message_id="dead-"
                        + hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()[
                            :40
                        ],
                        body=letter.payload,
                        records=0,
                        model_version="",
                        destination={
                            "exchange": self.topology.dead_letter_exchange,
                            "routing_key": self.topology.dead_letter_queue,
                            "message_id": message_id,
                            "headers": letter.headers,
                        },
                    )
                )
        try:
            enqueue(events)
        except (SQLAlchemyError, UnicodeError, ValueError, TypeError) as exc:
            log.warning(
                "dead letters not written to the outbox (%s); publishing them directly",
                store_error_detail(exc),
            )
            return False
        self.relay.wake()
        return True

    def _staged(self, letters: list[DeadLetterMessage]) -> list[DeadLetterMessage]:
        """A pipeline stage (issue 11) names itself in its dead letters' reason and headers."""
        if self.stage:
            for letter in letters:
                reason = letter.headers.get(REASON_HEADER)
                if isinstance(reason, str):
                    letter.headers[REASON_HEADER] = f"{self.stage}:{reason}"
                letter.headers["x-creditstream-stage"] = self.stage
        return letters

    # --- outbox (end) ---

    def _dead_letter(
        self, message: PendingMessage, letter: DeadLetterMessage, *, in_outbox: bool = False
    ) -> None:
        payload, headers = letter.payload, letter.headers
        if not in_outbox:
            self._publish_dead_letter(message, letter)
        for reason in letter.reasons:
            self.metrics.dead_lettered.labels(reason).inc()
        self.metrics.records.labels("rejected").inc(len(letter.reasons))
        log.warning(
            "dead-lettered %s record %s: %s (%s; %d bytes)",
            message.message_id[:200],
            letter.index,
            headers.get(REASON_HEADER),
            str(headers.get(DETAIL_HEADER, ""))[:200],
            len(payload),
        )

    def _publish_dead_letter(self, message: PendingMessage, letter: DeadLetterMessage) -> None:
        """The direct path (no outbox): a confirmed publish on this connection."""
        properties = pika.BasicProperties(
            content_type=_JSON,
            delivery_mode=2,
            headers=letter.headers,
            message_id=_short_id(letter.message_id),
        )
        delay = self.policy.hold_base_s
        while True:
            try:
                # NOTE: confirmed and mandatory: the original is acked only after the dead
                # letter is in a queue. Unroutable (nothing bound) or nacked (the dead-letter
                # queue refuses, e.g. full): keep the delivery unacked and try again.
                self.publisher.basic_publish(
                    self.topology.dead_letter_exchange,
                    self.topology.dead_letter_queue,
                    letter.payload,
                    properties,
                    mandatory=True,
                )
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
                if isinstance(exc, pika.exceptions.NackError) and not self.stop.is_set():
                    raise _DeadLetterRefused() from exc
                self.metrics.unroutable.inc()
                self.health.publish_ok = False
                if self.stop.is_set():
                    raise  # stopping: the delivery goes back unacked (redelivered later)
                log.error(
                    "dead letter of %s %s by the broker (exchange %s); request kept unacked, "
                    "retry in %.1fs",
                    message.message_id[:200],
                    "returned" if isinstance(exc, pika.exceptions.UnroutableError) else "nacked",
                    self.topology.dead_letter_exchange,
                    delay,
                )
                self.health.beat()
                self.sleep(delay)
                delay = min(delay * 2, self.policy.hold_max_s)
                continue
            break
        self.health.publish_ok = True

    # --- outbox (begin) ---
    def _event_of(self, predictions: Sequence[Prediction]) -> OutboxEvent:
        """The event message of the rows one store transaction adds (committed with them)."""
        return OutboxEvent(
            message_id=f"predictions-{uuid.uuid4().hex}",
            body=encode_json([p.as_event() for p in predictions]),
            records=len(predictions),
            model_version=self.model_version,
        )

    def _publish_predictions(self, predictions: list[Prediction]) -> None:
        # NOTE: durable first, events after: the event was committed to the outbox with the
        # rows (_event_of); the relay publishes it on its own connection. Nothing is published
        # here, so nothing here waits for the broker before the ack.
        if not predictions:
            return
        if self.publishes:  # NOTE: a shadow model's results stay in the store (no event)
            self.relay.wake()
        self.metrics.records.labels("scored").inc(len(predictions))

    # --- outbox (end) ---

    def _reply(
        self, message: PendingMessage, predictions: list[Prediction], result: StoreResult
    ) -> None:
        refused = result.refused.get(message.delivery_tag, ())
        if refused:
            gone = {r.index for r in refused}
            message = dataclasses.replace(
                message,
                records=[r for r in message.records if r.index not in gone],
                rejections=[*message.rejections, *refused],
            )
        if not reply_allowed(message.reply_to or "", self.reply_to_prefixes):
            # NOTE: a sender must not steer the consumer into publishing to another queue.
            self.metrics.hostile_refused.labels("reply-to").inc()
            log.warning(
                "reply_to %r of %s refused: only direct reply-to (amq.rabbitmq.reply-to.*)%s",
                (message.reply_to or "")[:100],
                message.message_id[:200],
                " or a configured prefix" if self.reply_to_prefixes else "",
            )
            return
        # --- outbox (begin) ---
        # NOTE: handed to the relay's publishing connection (never blocks, never holds the
        # ack): a reply published here would be blocked by a memory alarm, and the ack with it.
        self.relay.reply(
            message.reply_to or "",
            encode_json(reply_body(message, predictions)),
            message.correlation_id,
        )
        self.relay.wake()
        # --- outbox (end) ---


def retry_signing_key(amqp_url: str) -> bytes:
    """The key retry copies are signed with: derived from the consumer's broker credentials, so
    every replica shares it and a publisher without them cannot forge a signature."""
    return hashlib.sha256(b"creditstream-retry-publisher\0" + amqp_url.encode()).digest()


def sign_publisher(key: bytes, message_id: str, publisher: str) -> str:
    """HMAC-SHA256 of (message id, publisher): carried with the publisher on a retry copy."""
    data = message_id.encode("utf-8", "surrogatepass") + b"\0" + publisher.encode()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _publisher(props: Any, account: str, key: bytes = b"") -> str:
    """The publishing account of a delivery: its user_id, or, on a retry copy this consumer's
    account published and signed, the original publisher it carried along.

    NOTE: the header alone is not trusted: anyone publishing as the consumer's account (all of
    them, while the chart shares one broker user) could claim another account with it.
    """
    user_id = props.user_id or ""
    headers = props.headers or {}
    carried, signature = headers.get(PUBLISHER_HEADER), headers.get(PUBLISHER_SIGNATURE_HEADER)
    if (
        key
        and account
        and user_id == account
        and isinstance(carried, str)
        and carried
        and isinstance(signature, str)
        and isinstance(props.message_id, str)
        and hmac.compare_digest(signature, sign_publisher(key, props.message_id, carried))
    ):
        return carried
    return str(user_id)


def message_id_of(raw: str | bytes | None, body: bytes) -> str:
    """The message id the idempotency keys derive from (the same on every redelivery).

    pika hands over a message_id that is not UTF-8 as bytes: it becomes `bytes:<hex>` (or
    `bytes:sha256:<digest>` past 90 bytes), a text the store, logs and JSON take; no id at all
    becomes a digest of the body.
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # NOTE: a prefix of its own (no collision with a client id "0x..."), and a digest
            # when the hex would not fit the 255-character column.
            if len(raw) <= 90:
                return "bytes:" + raw.hex()
            return "bytes:sha256:" + hashlib.sha256(raw).hexdigest()
        return text or "sha256:" + hashlib.sha256(body).hexdigest()[:40]
    return raw or "sha256:" + hashlib.sha256(body).hexdigest()[:40]


def _attempt(headers: dict[str, Any], retry_queue: str) -> int:
    """Scoring attempts before this delivery: the attempt header, trusted only on a message
    the broker dead-lettered out of our retry queue (x-death names it); a publisher's own
    header would skip the retry budget."""
    deaths = headers.get("x-death")
    from_retry = isinstance(deaths, list) and any(
        isinstance(death, dict) and death.get("queue") in (retry_queue, retry_queue.encode())
        for death in deaths
    )
    if not from_retry:
        return 0
    count = headers.get(ATTEMPT_HEADER)
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0


def _short_id(value: str) -> str:
    """An AMQP message id (a short string: at most 255 bytes); longer ones are hashed."""
    if len(value.encode("utf-8", "surrogatepass")) <= 255:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _raw_record(message: PendingMessage, index: int) -> Any:
    """The record as it arrived (for a dead letter of a record the store refused)."""
    try:
        payload = orjson.loads(message.body)
    except orjson.JSONDecodeError:
        return None
    if message.is_batch and isinstance(payload, list) and 0 <= index < len(payload):
        return payload[index]
    return payload


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
