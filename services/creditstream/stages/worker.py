"""A transform stage (preprocess, features): consume, transform a batch, publish, then ack.

Exactly once across stages: each output is published with publisher confirms and a message id
derived from the input's id and the stage name (a redelivered input makes the same ids), and the
input is acked only after every output and dead letter is confirmed. The sink's idempotent
store turns at-least-once delivery into one row per record.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions

from creditstream.broker import (
    BROKER_DOWN_ERRORS,
    ConnectInterrupted,
    account_of,
    connect,
    interruptible_sleep,
)
from creditstream.codec import Rejection, encode_json
from creditstream.metrics import HealthState
from creditstream.stages.metrics import StageMetrics, now_us, trace_of
from creditstream.stages.topology import (
    NEXT,
    STAGE_HEADER,
    TRACE_HEADER,
    bind_shadow,
    stage_exchange,
    stage_settings,
)
from creditstream.stages.transforms import StageOutput
from creditstream.topology import (
    DETAIL_HEADER,
    INDEX_HEADER,
    REASON_HEADER,
    REQUEST_ROUTING_KEY,
    RESULT_SOURCE_HEADER,
    SENT_AT_HEADER,
    SOURCE_HEADER,
    Topology,
    TopologyMismatchError,
)

if TYPE_CHECKING:
    from creditstream.settings import Settings

log = logging.getLogger(__name__)
_JSON = "application/json"
_IDLE_TICK_S = 0.25

# A batch of (body, content type) → one StageOutput per message, in order.
Transform = Callable[[list[tuple[bytes, str | None]]], list[StageOutput]]


def output_id(input_id: str, stage: str) -> str:
    """The id of a stage's output: the input's id and the stage name (hashed past 255 bytes)."""
    value = f"{input_id}|{stage}"
    if len(value.encode("utf-8", "surrogatepass")) <= 255:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class _Delivery:
    tag: int
    props: pika.BasicProperties
    body: bytes
    message_id: str
    trace: dict[str, int]


class StageWorker:
    """One stage's consumer loop; reconnects when the broker goes away."""

    def __init__(
        self,
        settings: Settings,
        stage: str,
        transform: Transform,
        metrics: StageMetrics | None = None,
        health: HealthState | None = None,
    ) -> None:
        nxt = NEXT[stage]
        if nxt is None:
            raise ValueError(f"{stage} is the sink: run it with the score consumer")
        self.stage, self.next_stage = stage, nxt
        self.settings = stage_settings(settings, stage)
        self.topology = Topology.from_settings(self.settings)
        self.next_topology = Topology.from_settings(stage_settings(settings, nxt))
        self.declares_shadow = nxt == "score" and settings.stage_shadow
        self.base_settings = settings
        self.next_exchange = stage_exchange(settings, nxt)
        self.transform = transform
        self.metrics = metrics or StageMetrics(stage)
        self.health = health or HealthState()
        self.health.model_loaded = True
        self.health.store_ok = True  # NOTE: a transform stage has no store
        self._stop = threading.Event()
        self._last_delivery = time.monotonic()
        self.messages_done = 0

    def request_stop(self) -> None:
        """Drain what is in hand and exit (signal-handler safe)."""
        self._stop.set()

    def run(self) -> int:
        """Serve until stopped or idle (exit_when_idle_s)."""
        first, delay = True, 0.2
        while not self._stop.is_set():
            try:
                connection = connect(
                    self.settings,
                    name=f"creditstream-stage-{self.stage}",
                    wait_s=self.settings.broker_wait_s if first else 0,
                    stop=self._stop,
                )
            except ConnectInterrupted:
                break
            except BROKER_DOWN_ERRORS as exc:
                if first:
                    log.error("broker unreachable, giving up: %s", exc)
                    return 2
                log.warning("broker unreachable (%s); retrying in %.1fs", exc, delay)
                self.health.beat()
                interruptible_sleep(self._stop)(delay)
                delay = min(delay * 2, self.settings.reconnect_max_s)
                continue
            if not first:
                self.metrics.reconnects.inc()
            first, delay = False, 0.2
            try:
                finished = self._serve(connection)
            except TopologyMismatchError as exc:
                log.error("%s", exc)
                return 2
            except (*BROKER_DOWN_ERRORS, pika.exceptions.AMQPError) as exc:
                log.warning("lost the broker connection: %s", exc)
                finished = False
            finally:
                self.health.broker_connected = False
                try:
                    if connection.is_open:
                        connection.close()
                except Exception:
                    log.debug("ignoring error while closing", exc_info=True)
            if finished:
                break
        log.info("stage %s stopped; %d messages this run", self.stage, self.messages_done)
        return 0

    def _serve(self, connection: pika.BlockingConnection) -> bool:
        channel = connection.channel()
        self.topology.declare(channel)
        # NOTE: the next stage's queue must exist before we publish to its exchange (mandatory
        # publishes would come back unroutable otherwise).
        self.next_topology.declare(channel)
        if self.declares_shadow:
            bind_shadow(channel, self.base_settings)
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
        self.health.broker_connected = True
        self._last_delivery = time.monotonic()
        log.info("stage %s consuming %s", self.stage, self.topology.requests_queue)
        cancelled = False
        batch: list[_Delivery] = []
        limit = self.settings.batch_size
        while True:
            self.health.beat()
            idle = self.settings.exit_when_idle_s
            if not cancelled and (
                self._stop.is_set()
                or (
                    idle is not None
                    and not inbox
                    and time.monotonic() - self._last_delivery >= idle
                )
            ):
                connection.process_data_events(time_limit=0)
                channel.basic_cancel(consumer_tag)
                cancelled = True
                self.health.draining = True
            while inbox:
                method, props, body = inbox.popleft()
                self._last_delivery = time.monotonic()
                if method.redelivered:
                    self.metrics.redelivered.inc()
                received = now_us()
                trace = trace_of(props.headers)
                self.metrics.waited(trace, received)
                trace[f"{self.stage}.in"] = received
                message_id = props.message_id or ("sha256:" + hashlib.sha256(body).hexdigest()[:40])
                batch.append(_Delivery(method.delivery_tag, props, body, message_id, trace))
                if len(batch) >= limit:
                    self._process(channel, publisher, batch)
                    batch = []
            if batch:
                self._process(channel, publisher, batch)
                batch = []
            if cancelled and not inbox:
                channel.close()
                return True
            connection.process_data_events(time_limit=0 if inbox else _IDLE_TICK_S)

    def _process(self, channel: Any, publisher: Any, batch: list[_Delivery]) -> None:
        started = time.perf_counter()
        try:
            outputs = self.transform([(d.body, d.props.content_type) for d in batch])
        except Exception:
            log.exception(
                "stage %s: a batch of %d messages failed; isolating", self.stage, len(batch)
            )
            self._one_by_one(channel, publisher, batch, started)
            return
        for delivery, output in zip(batch, outputs, strict=True):
            for rejection in output.rejections:
                self._dead_letter(publisher, delivery, rejection)
            if output.body is not None:
                self._publish(publisher, delivery, output.body)
            self.metrics.stage_records.labels(self.stage, "out").inc(output.n_out)
            self.metrics.stage_records.labels(self.stage, "rejected").inc(len(output.rejections))
        channel.basic_ack(batch[-1].tag, multiple=True)
        self.messages_done += len(batch)
        self.metrics.messages.inc(len(batch))
        self.metrics.batches.inc()
        self.metrics.stage_batch_size.labels(self.stage).observe(len(batch))
        self.metrics.stage_seconds.labels(self.stage).observe(time.perf_counter() - started)

    def _one_by_one(
        self, channel: Any, publisher: Any, batch: list[_Delivery], started: float
    ) -> None:
        """After a batch failure: each message alone; only a failing one is returned.

        NOTE: the stage's code or model failed, not the input (bad input is a rejection): the
        failing message is nacked (requeued) alone, so its batch-mates are not charged a
        delivery; the quorum queue's delivery limit dead-letters one that keeps failing.
        """
        for delivery in batch:
            try:
                (output,) = self.transform([(delivery.body, delivery.props.content_type)])
            except Exception as exc:  # noqa: BLE001
                self.metrics.scoring_failures.inc()
                log.error(
                    "stage %s: message %s failed alone (%s); requeued",
                    self.stage,
                    delivery.message_id[:200],
                    exc,
                )
                channel.basic_nack(delivery.tag, requeue=True)
                continue
            self._settle(channel, publisher, delivery, output)
        self.metrics.stage_seconds.labels(self.stage).observe(time.perf_counter() - started)

    def _settle(
        self, channel: Any, publisher: Any, delivery: _Delivery, output: StageOutput
    ) -> None:
        for rejection in output.rejections:
            self._dead_letter(publisher, delivery, rejection)
        if output.body is not None:
            self._publish(publisher, delivery, output.body)
        self.metrics.stage_records.labels(self.stage, "out").inc(output.n_out)
        self.metrics.stage_records.labels(self.stage, "rejected").inc(len(output.rejections))
        channel.basic_ack(delivery.tag)
        self.messages_done += 1
        self.metrics.messages.inc()

    def _publish(self, publisher: Any, delivery: _Delivery, body: bytes) -> None:
        props = delivery.props
        trace = {**delivery.trace, f"{self.stage}.out": now_us()}
        headers: dict[str, Any] = {TRACE_HEADER: trace, STAGE_HEADER: self.stage}
        sent = (props.headers or {}).get(SENT_AT_HEADER)
        if isinstance(sent, int):
            headers[SENT_AT_HEADER] = sent  # NOTE: end-to-end latency at the sink
        source = (props.headers or {}).get(RESULT_SOURCE_HEADER)
        if isinstance(source, str):
            headers[RESULT_SOURCE_HEADER] = source  # NOTE: synthetic/smoke-test rows stay marked
        publisher.basic_publish(
            self.next_exchange,
            REQUEST_ROUTING_KEY,
            body,
            pika.BasicProperties(
                content_type=_JSON,
                delivery_mode=2,
                message_id=output_id(delivery.message_id, self.stage),
                correlation_id=props.correlation_id,
                reply_to=props.reply_to,
                headers=headers,
                # NOTE: the score stage (the consumer) requires the broker-checked user_id: a
                # stage publishes as its own account, which the broker verifies.
                user_id=account_of(publisher) or None,
            ),
            mandatory=True,
        )

    def _dead_letter(self, publisher: Any, delivery: _Delivery, rejection: Rejection) -> None:
        payload = delivery.body
        if rejection.index is not None:
            try:
                payload = encode_json(rejection.raw)
            except (TypeError, ValueError):
                payload = delivery.body
        headers: dict[str, Any] = {
            REASON_HEADER: f"{self.stage}:{rejection.reason}",
            DETAIL_HEADER: rejection.detail[:500],
            SOURCE_HEADER: delivery.message_id,
            STAGE_HEADER: self.stage,
            TRACE_HEADER: delivery.trace,
        }
        if rejection.index is not None:
            headers[INDEX_HEADER] = rejection.index
        publisher.basic_publish(
            self.topology.dead_letter_exchange,
            self.topology.dead_letter_queue,
            payload,
            pika.BasicProperties(
                content_type=_JSON,
                delivery_mode=2,
                headers=headers,
                message_id=output_id(
                    f"{delivery.message_id}#dead{rejection.index or 0}", self.stage
                ),
            ),
            # NOTE: an unroutable dead letter (DLQ deleted or unbound) raises: the input is
            # not acked, the connection is renewed and the input comes back.
            mandatory=True,
        )
        self.metrics.dead_lettered.labels(f"{self.stage}:{rejection.reason}").inc()
        log.warning(
            "stage %s dead-lettered %s record %s: %s (%s)",
            self.stage,
            delivery.message_id[:200],
            rejection.index,
            rejection.reason,
            rejection.detail[:200],
        )
