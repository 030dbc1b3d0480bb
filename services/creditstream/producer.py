"""The producer: streams records into RabbitMQ with windowed publisher confirms.

pika's BlockingChannel waits for each confirm in turn (~1.5k msg/s here); the async
SelectConnection keeps up to `confirm_window` publishes in flight and settles them as the
broker's (multiple) acks arrive. Unconfirmed messages are republished with the same message_id
after a reconnect, so the consumer's idempotent store turns at-least-once into exactly-once.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions
from pika.spec import Basic

from creditstream.broker import (
    ConnectInterrupted,
    connect,
    connection_parameters,
    interruptible_sleep,
)
from creditstream.codec import encode_records
from creditstream.topology import (
    REQUEST_ROUTING_KEY,
    RESULT_SOURCE_HEADER,
    SENT_AT_HEADER,
    Topology,
)

if TYPE_CHECKING:
    from pika.channel import Channel

    from creditstream.settings import Settings

log = logging.getLogger(__name__)

_PUBLISH_SLICE = 256  # publishes per ioloop turn, so confirms are read in between
# NOTE: after a stop request, confirms still outstanding get this long (the chart gives a pod
# 30 s or more after SIGTERM); what stays unconfirmed is reported and republished, same ids,
# by the next run with the same run id.
_STOP_GRACE_S = 10.0
_STOP_POLL_S = 0.2


@dataclass
class OutgoingMessage:
    """One AMQP message: a stable id, its body and how many records it carries."""

    message_id: str
    body: bytes
    n_records: int
    attempts: int = 0
    nacked_since: float | None = None


def build_messages(
    records: Iterable[dict[str, Any]],
    records_per_message: int,
    run_id: str,
    *,
    max_body_bytes: int | None = None,
) -> Iterator[OutgoingMessage]:
    """Group records into messages with deterministic ids `<run_id>-<sequence>`.

    A body over `max_body_bytes` is refused here (ValueError), before it is published: the
    consumer would dead-letter it unread.
    """
    iterator = iter(records)
    for sequence in itertools.count(1):
        chunk = list(itertools.islice(iterator, records_per_message))
        if not chunk:
            return
        body = encode_records(chunk)
        if max_body_bytes is not None and len(body) > max_body_bytes:
            raise ValueError(
                f"message {sequence} of {len(chunk)} records is {len(body)} bytes, over "
                f"max_body_bytes ({max_body_bytes}): send fewer records per message"
            )
        yield OutgoingMessage(f"{run_id}-{sequence:09d}", body, len(chunk))


@dataclass
class Pacer:
    """When the next fresh message may go out, for a records/s rate or a fixed interval."""

    rate: float | None = None
    interval: float | None = None
    started: float | None = None

    def delay(self, now: float, records_sent: int, messages_sent: int) -> float:
        """Seconds to wait before sending the next message (0: send now)."""
        if self.started is None:
            self.started = now
        if self.rate:
            due = self.started + records_sent / self.rate
        elif self.interval:
            due = self.started + messages_sent * self.interval
        else:
            return 0.0
        return max(0.0, due - now)


@dataclass
class ProduceReport:
    """What the producer achieved; `complete` False makes the CLI exit non-zero."""

    source: str
    records: int = 0
    messages: int = 0
    seconds: float = 0.0
    unconfirmed: int = 0
    unconfirmed_messages: int = 0
    republished: int = 0
    reconnects: int = 0
    source_finished: bool = False
    stopped: str | None = None

    @property
    def complete(self) -> bool:
        """Every record of the source was sent and confirmed."""
        return self.source_finished and not self.unconfirmed

    @property
    def rate(self) -> float:
        """Confirmed records per second."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def summary_line(self) -> str:
        """One line for humans and logs."""
        line = (
            f"produced {self.records} records in {self.messages} messages in "
            f"{self.seconds:.2f} s ({self.rate:,.0f} records/s) from {self.source}"
        )
        if self.republished or self.reconnects:
            line += f"; {self.reconnects} reconnects, {self.republished} republished"
        if self.unconfirmed:
            line += f"; NOT CONFIRMED: {self.unconfirmed} records"
        if not self.source_finished:
            line += f"; STOPPED ({self.stopped or 'unknown reason'}) before the end of the source"
        return line


@dataclass
class _State:
    retry: deque[OutgoingMessage] = field(default_factory=deque)
    in_flight: OrderedDict[int, OutgoingMessage] = field(default_factory=OrderedDict)
    next_tag: int = 0
    exhausted: bool = False
    finished: bool = False
    blocked: bool = False
    stopping: bool = False
    fresh_records: int = 0
    fresh_messages: int = 0
    gave_up: list[OutgoingMessage] = field(default_factory=list)
    nack_delay: float = 0.0
    nack_pause_until: float = 0.0


class ConfirmingPublisher:
    """Publishes a message stream with a window of outstanding publisher confirms."""

    def __init__(
        self,
        settings: Settings,
        messages: Iterator[OutgoingMessage],
        *,
        source: str,
        pacer: Pacer | None = None,
        on_confirmed: Callable[[int], None] | None = None,
        total_records: int | None = None,
        stop: threading.Event | None = None,
        result_source: str = "live",
    ) -> None:
        self.settings = settings
        self._result_source = result_source
        self.topology = Topology.from_settings(settings)
        self._messages = messages
        self._pacer = pacer or Pacer()
        self._on_confirmed = on_confirmed or (lambda _n: None)
        self._total_records = total_records
        self._stop = stop or threading.Event()
        self._state = _State()
        self.report = ProduceReport(source=source)
        self._connection: pika.SelectConnection | None = None
        self._channel: Channel | None = None
        self._timer: object | None = None

    def run(self) -> ProduceReport:
        """Publish everything; reconnect with backoff; return the report.

        Always returns: at the end of the source, when the broker stayed away longer than
        broker_wait_s, or soon after the stop event is set (SIGTERM).
        """
        started = time.monotonic()
        # NOTE: declare with a short blocking connection (also waits for a starting broker);
        # the async connection below only publishes.
        try:
            declaring = connect(self.settings, name="creditstream-producer-setup", stop=self._stop)
        except ConnectInterrupted:
            return self._finish_report(started, "SIGTERM while waiting for the broker")
        try:
            self.topology.declare(declaring.channel())
        finally:
            declaring.close()
        delay, outage_started = 0.2, None
        sleep = interruptible_sleep(self._stop)
        while not self._state.finished:
            if self._stop.is_set():
                return self._finish_report(started, "SIGTERM")
            progress_before = self.report.records
            self._connection = pika.SelectConnection(
                # NOTE: one node per connection (SelectConnection takes one parameter set):
                # after each lost connection the producer moves on to the next node.
                connection_parameters(
                    self.settings, name="creditstream-producer", index=self.report.reconnects
                ),
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_connection_failed,
                on_close_callback=self._on_connection_closed,
            )
            self._connection.ioloop.start()
            if self._state.finished:
                break
            if self.report.records > progress_before:
                delay, outage_started = 0.2, None
            outage_started = outage_started or time.monotonic()
            if time.monotonic() - outage_started > self.settings.broker_wait_s:
                log.error("broker unreachable for %.0fs; giving up", self.settings.broker_wait_s)
                return self._finish_report(started, "broker unreachable")
            self.report.reconnects += 1
            log.warning("broker connection lost; reconnecting in %.1fs", delay)
            sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max_s)
        return self._finish_report(started, "SIGTERM" if self._state.stopping else None)

    def _finish_report(self, started: float, stopped: str | None) -> ProduceReport:
        """Fill in the timing and what was not confirmed (never reads the rest of the source:
        it may be endless)."""
        state, report = self._state, self.report
        report.seconds = time.monotonic() - started
        report.source_finished = state.exhausted
        report.stopped = None if report.source_finished else stopped
        left = list(state.in_flight.values()) + list(state.retry) + state.gave_up
        report.unconfirmed_messages = len(left)
        report.unconfirmed = sum(m.n_records for m in left)
        if not report.source_finished and self._total_records is not None:
            report.unconfirmed = max(report.unconfirmed, self._total_records - report.records)
        if report.stopped:
            log.warning("producer stopped (%s): %s", report.stopped, report.summary_line())
        return report

    # --- connection callbacks -------------------------------------------------------------
    def _on_connection_open(self, connection: pika.SelectConnection) -> None:
        # NOTE: flow control is per connection: a new one starts unblocked, and the broker
        # never sends connection.unblocked to a connection it did not block.
        self._state.blocked = False
        connection.ioloop.call_later(_STOP_POLL_S, self._watch_stop)
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_failed(self, connection: pika.SelectConnection, error: Any) -> None:
        log.warning("cannot open a broker connection: %s", error)
        connection.ioloop.stop()

    def _on_connection_closed(self, connection: pika.SelectConnection, reason: Any) -> None:
        state = self._state
        if not state.finished:
            log.warning("broker connection closed: %s", reason)
            # Unconfirmed messages go first on the next connection, same ids.
            state.retry.extendleft(reversed(list(state.in_flight.values())))
            self.report.republished += len(state.in_flight)
            state.in_flight.clear()
        self._channel = None
        connection.ioloop.stop()

    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        self._state.next_tag = 0
        channel.add_on_close_callback(self._on_channel_closed)
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: self._publish_more()
        )

    def _on_channel_closed(self, _channel: Channel, reason: Any) -> None:
        if self._connection is not None and self._connection.is_open:
            log.warning("channel closed by the broker: %s", reason)
            self._connection.close()

    def _watch_stop(self) -> None:
        """Poll the stop event from the ioloop (signal handlers only set it)."""
        connection = self._connection
        if connection is None or not connection.is_open:
            return
        if self._stop.is_set() and not self._state.stopping:
            log.warning(
                "stop requested: no new messages; waiting up to %.0fs for %d confirms",
                _STOP_GRACE_S,
                len(self._state.in_flight),
            )
            self._state.stopping = True
            connection.ioloop.call_later(_STOP_GRACE_S, self._give_up_waiting)
            self._finish_if_done()
        connection.ioloop.call_later(_STOP_POLL_S, self._watch_stop)

    def _give_up_waiting(self) -> None:
        state = self._state
        if not state.finished:
            log.error("%d publishes still unconfirmed after the stop grace", len(state.in_flight))
            state.finished = True
            if self._connection is not None and self._connection.is_open:
                self._connection.close()

    def _on_blocked(self, _connection: Any, _frame: Any) -> None:
        log.warning("broker applies flow control (connection.blocked); pausing publishes")
        self._state.blocked = True

    def _on_unblocked(self, _connection: Any, _frame: Any) -> None:
        log.info("broker lifted flow control; resuming")
        self._state.blocked = False
        self._publish_more()

    # --- publishing -----------------------------------------------------------------------
    def _next_message(self) -> OutgoingMessage | None:
        state = self._state
        if state.stopping:
            return None
        if state.retry:
            return state.retry.popleft()
        if state.exhausted:
            return None
        message = next(self._messages, None)
        if message is None:
            state.exhausted = True
        return message

    def _publish_more(self) -> None:
        self._timer = None
        state, channel = self._state, self._channel
        if channel is None or not channel.is_open or state.blocked or state.finished:
            return
        paused = state.nack_pause_until - time.monotonic()
        if paused > 0:
            self._schedule(paused)
            return
        window = self.settings.confirm_window
        for _ in range(_PUBLISH_SLICE):
            if len(state.in_flight) >= window:
                return  # the next confirm calls us again
            if not state.retry and not state.exhausted and not state.stopping:
                wait = self._pacer.delay(
                    time.monotonic(), state.fresh_records, state.fresh_messages
                )
                if wait > 0:
                    self._schedule(wait)
                    return
            message = self._next_message()
            if message is None:
                self._finish_if_done()
                return
            if message.attempts == 0:
                state.fresh_records += message.n_records
                state.fresh_messages += 1
            message.attempts += 1
            state.next_tag += 1
            state.in_flight[state.next_tag] = message
            channel.basic_publish(
                self.topology.requests_exchange,
                REQUEST_ROUTING_KEY,
                message.body,
                pika.BasicProperties(
                    content_type="application/json",
                    delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=message.message_id,
                    # NOTE: the account RabbitMQ checks; the consumer namespaces keys by it.
                    user_id=channel.connection.params.credentials.username,
                    headers=self._headers(),
                ),
            )
        self._schedule(0)  # yield to the ioloop so confirms and heartbeats are handled

    def _headers(self) -> dict[str, Any]:
        headers: dict[str, Any] = {SENT_AT_HEADER: time.time_ns() // 1000}
        if self._result_source != "live":
            headers[RESULT_SOURCE_HEADER] = self._result_source
        return headers

    def _schedule(self, delay: float) -> None:
        if self._timer is None and self._connection is not None:
            self._timer = self._connection.ioloop.call_later(delay, self._publish_more)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        state = self._state
        settled: list[OutgoingMessage] = []
        if method.multiple:
            while state.in_flight and next(iter(state.in_flight)) <= method.delivery_tag:
                settled.append(state.in_flight.popitem(last=False)[1])
        elif method.delivery_tag in state.in_flight:
            settled.append(state.in_flight.pop(method.delivery_tag))
        if isinstance(method, Basic.Ack):
            records = sum(m.n_records for m in settled)
            self.report.records += records
            self.report.messages += len(settled)
            self._on_confirmed(records)
            state.nack_delay = 0.0
        elif settled:
            # NOTE: a nack is the broker refusing for now (a quorum queue electing a new
            # leader after a node loss takes seconds): retry with backoff, and give a message
            # up only after it has been refused for broker_wait_s, not after a few instant
            # retries that all land inside the election.
            now = time.monotonic()
            for message in settled:
                message.nacked_since = message.nacked_since or now
                if now - message.nacked_since > self.settings.broker_wait_s:
                    log.error(
                        "message %s nacked for %.0fs (%d attempts); giving up on it",
                        message.message_id,
                        now - message.nacked_since,
                        message.attempts,
                    )
                    state.gave_up.append(message)
                else:
                    state.retry.append(message)
                    self.report.republished += 1
            state.nack_delay = min(max(0.2, state.nack_delay * 2), self.settings.reconnect_max_s)
            state.nack_pause_until = now + state.nack_delay
            log.warning(
                "broker nacked %d message(s); publishing again in %.1fs",
                len(settled),
                state.nack_delay,
            )
        self._publish_more()
        self._finish_if_done()

    def _finish_if_done(self) -> None:
        state = self._state
        drained = state.stopping or (state.exhausted and not state.retry)
        if drained and not state.in_flight and not state.finished:
            state.finished = True
            if self._connection is not None and self._connection.is_open:
                self._connection.close()


def iter_source_records(
    settings: Settings, *, synthetic: bool, limit: int | None, repeat: int
) -> tuple[Iterator[dict[str, Any]], int | None, str]:
    """Records from the data set (or SYNTHETIC ones), the total if known, and a label."""
    if synthetic:
        from creditstream.model_card import load_model_card
        from creditstream.synthetic import iter_synthetic_records

        card = load_model_card(settings.resolved_model_card_path)
        total = limit
        records = iter_synthetic_records(card.document, limit, settings.seed)
        return records, total, "SYNTHETIC records (model-card distributions)"
    from creditstream.data.dataset import load_dataset
    from creditstream.data.source import resolve_data_path

    path = resolve_data_path(settings)
    frame = load_dataset(path)
    rows = dataset_records(frame)
    stream: Iterator[dict[str, Any]] = itertools.chain.from_iterable(itertools.repeat(rows, repeat))
    total = len(rows) * repeat
    if limit is not None:
        stream, total = itertools.islice(stream, limit), min(limit, total)
    return stream, total, f"data set {path}"


def dataset_records(frame: Any) -> list[dict[str, Any]]:
    """Request records (ID + 23 features, whole numbers as ints) from a data-set frame."""
    from creditstream.contract import FEATURES, ID_FIELD

    columns = [ID_FIELD, *FEATURES]
    records = frame[columns].to_dict("records")
    for record in records:
        for key, value in record.items():
            if isinstance(value, float) and value.is_integer():
                record[key] = int(value)
    return records


def run_producer(
    settings: Settings,
    *,
    synthetic: bool = False,
    limit: int | None = None,
    rate: float | None = None,
    interval: float | None = None,
    records_per_message: int = 1,
    repeat: int = 1,
    progress: bool | None = None,
    records: Iterable[dict[str, Any]] | None = None,
    stop: threading.Event | None = None,
) -> ProduceReport:
    """Publish records (given, or from the configured source) and report what was confirmed.

    Setting `stop` (e.g. from a SIGTERM handler) ends the run early: no new messages, the
    outstanding confirms get a short grace, the report says what was not confirmed.
    """
    if records is not None:
        stream: Iterator[dict[str, Any]] = iter(records)
        total, label = None, "caller-supplied records"
    else:
        stream, total, label = iter_source_records(
            settings, synthetic=synthetic, limit=limit, repeat=repeat
        )
    run_id = settings.run_id or uuid.uuid4().hex[:12]
    log.info(
        "producing from %s (run id %s, %d record(s)/message)", label, run_id, records_per_message
    )
    messages = build_messages(
        stream, records_per_message, run_id, max_body_bytes=settings.max_body_bytes
    )
    # NOTE: generated records are stored as source "synthetic", apart from live results.
    result_source = "synthetic" if synthetic and records is None else "live"
    pacer = Pacer(rate=rate, interval=interval)
    show = sys.stderr.isatty() if progress is None else progress
    if not show:
        return ConfirmingPublisher(
            settings,
            messages,
            source=label,
            pacer=pacer,
            total_records=total,
            stop=stop,
            result_source=result_source,
        ).run()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("confirmed"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task("produce", total=total if total is not None else None)
        publisher = ConfirmingPublisher(
            settings,
            messages,
            source=label,
            pacer=pacer,
            on_confirmed=lambda n: bar.advance(task, n),
            total_records=total,
            stop=stop,
            result_source=result_source,
        )
        return publisher.run()
