"""The outbox relay: prediction events and RPC replies, on a publishing connection of their own.

Durable first, events after. The consumer commits each batch's rows together with an outbox
row holding its event message and acks at once; this relay publishes the outbox to the
predictions exchange afterwards:

- on a SEPARATE connection: under a memory or disk alarm RabbitMQ blocks every connection that
  publishes. Only this one is blocked; the consumer's connection keeps acking and draining;
- confirmed and `mandatory`: a row is deleted only after the broker confirmed the event and
  routed it (to the results stream). Returned (no queue bound), nacked or unconfirmed events
  stay in the outbox and are retried with backoff (`creditstream_events_returned_total`);
- several relays (one per consumer) share the outbox: on PostgreSQL each claims rows with
  `FOR UPDATE SKIP LOCKED`, and the rows of a relay that died (SIGKILL) are unlocked with its
  session and taken over by another;
- events are at-least-once: a relay that dies between the confirm and the delete publishes the
  event again (same message id); readers de-duplicate by `request_id`.

RPC replies are handed over by the consumer right after its commit (never holding the ack) and
published here, unconfirmed, on a channel of their own: during an alarm they wait with
everything else this connection publishes, in a bounded buffer (`reply_buffer`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions
from sqlalchemy.exc import SQLAlchemyError

from creditstream.broker import BROKER_DOWN_ERRORS, ConnectInterrupted, connect
from creditstream.metrics import ConsumerMetrics, HealthState
from creditstream.topology import Topology

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel

    from creditstream.settings import Settings
    from creditstream.store import OutboxRow, ResultsStore

log = logging.getLogger(__name__)

_JSON = "application/json"
MODEL_VERSION_HEADER = "x-creditstream-model-version"
RECORDS_HEADER = "x-creditstream-records"
# What ends one publishing connection (then: reconnect with backoff).
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    *BROKER_DOWN_ERRORS,
    pika.exceptions.AMQPError,
)


@dataclass(frozen=True)
class Reply:
    """One RPC reply waiting for the publishing connection."""

    routing_key: str
    body: bytes
    correlation_id: str | None


class OutboxRelay:
    """Publishes committed events from the outbox, and replies, on its own connection."""

    def __init__(
        self,
        settings: Settings,
        store: ResultsStore,
        metrics: ConsumerMetrics | None = None,
        health: HealthState | None = None,
        *,
        name: str = "creditstream-relay",
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or ConsumerMetrics()
        self.health = health or HealthState()
        self.topology = Topology.from_settings(settings)
        self.name = name
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        self._delay = 0.2  # reconnect backoff
        # destination -> (retry at, backoff s): a destination that refused a message waits
        self._held: dict[str, tuple[float, float]] = {}

    # --- called from the consumer's thread ----------------------------------------------------
    def start(self) -> OutboxRelay:
        """Run on a daemon thread (a relay stuck in a blocked publish never holds up an exit)."""
        self._thread = threading.Thread(target=self.run, name="outbox-relay", daemon=True)
        self._thread.start()
        # NOTE: the backlog gauges on a thread of their own: the relay's thread may sit in a
        # blocked publish for minutes (an alarm), exactly when an operator looks at them.
        threading.Thread(target=self._watch_backlog, name="outbox-gauges", daemon=True).start()
        return self

    @property
    def alive(self) -> bool:
        """The relay's thread runs (False before start and after it died or stopped)."""
        return self._thread is not None and self._thread.is_alive()

    def _watch_backlog(self) -> None:
        while not self._stop.wait(max(self.settings.outbox_poll_s, 1.0) * 5):
            self._report_backlog()

    def wake(self) -> None:
        """New rows are committed (or replies queued): look now, not at the next poll."""
        if self._wake.is_set():
            return  # NOTE: one wake-up per relay round is enough (a batch may reply 256 times)
        self._wake.set()
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(lambda: None)
            except Exception:
                log.debug("relay wake-up not delivered", exc_info=True)

    def reply(self, routing_key: str, body: bytes, correlation_id: str | None) -> None:
        """Queue one reply; the oldest is dropped (and counted) when reply_buffer is full."""
        with self._lock:
            if len(self._replies) >= self.settings.reply_buffer:
                self._replies.popleft()
                self.metrics.replies_dropped.inc()
            self._replies.append(Reply(routing_key, body, correlation_id))

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish what is at hand (within `timeout_s`), then stop; the rest stays in the outbox."""
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            if self._thread.is_alive():
                log.warning(
                    "outbox relay still blocked after %.0fs (memory alarm?); its events stay "
                    "in the outbox for another relay",
                    timeout_s,
                )

    # --- the relay's own thread ---------------------------------------------------------------
    def run(self) -> None:
        """Connect, publish, reconnect with backoff; until stopped."""
        self._delay = 0.2
        while not self._stop.is_set():
            try:
                connection = connect(self.settings, name=self.name, wait_s=0, stop=self._stop)
            except ConnectInterrupted:
                break
            except BROKER_DOWN_ERRORS as exc:
                log.warning("relay: broker unreachable (%s); retrying in %.1fs", exc, self._delay)
                self._stop.wait(self._delay)
                self._delay = min(self._delay * 2, self.settings.reconnect_max_s)
                continue
            self._connection = connection
            self._set_connected(True)
            try:
                self._serve(connection)
            except _CONNECTION_ERRORS as exc:
                # NOTE: the backoff grows until a round succeeds (_serve resets it): a broker
                # that accepts the connection and then refuses the channel is not hammered.
                log.warning("relay: publishing connection lost (%s); reconnecting", exc)
                self._stop.wait(self._delay)
                self._delay = min(self._delay * 2, self.settings.reconnect_max_s)
            except Exception:  # NOTE: the relay must outlive any one failure
                # NOTE: a dead relay thread would leave events in the outbox unnoticed.
                log.exception("relay: unexpected error; reconnecting in %.1fs", self._delay)
                self._stop.wait(self._delay)
                self._delay = min(self._delay * 2, self.settings.reconnect_max_s)
            finally:
                self._connection = None
                self._set_connected(False)
                try:
                    if connection.is_open:
                        connection.close()
                except Exception:
                    log.debug("ignoring error while closing the relay connection", exc_info=True)

    def _set_connected(self, connected: bool) -> None:
        self.health.events_relay_connected = connected
        self.metrics.relay_connected.set(1 if connected else 0)

    def _serve(self, connection: pika.BlockingConnection) -> None:
        events = connection.channel()
        self.topology.declare(events)
        events.confirm_delivery()
        replies = connection.channel()
        log.info(
            "relay publishing events to %s (stream %s)",
            self.topology.predictions_exchange,
            self.topology.results_stream or "-",
        )
        while True:
            self._wake.clear()
            self._send_replies(replies)
            more = False
            if time.monotonic() >= self._retry_at:
                more = self._publish_round(events)
            if self._stop.is_set() and not more:
                self._send_replies(replies)
                return
            if more:
                connection.process_data_events(time_limit=0)
                continue
            # NOTE: wake() interrupts this wait (add_callback_threadsafe); heartbeats flow.
            deadline = time.monotonic() + self.settings.outbox_poll_s
            while not self._wake.is_set() and (left := deadline - time.monotonic()) > 0:
                connection.process_data_events(time_limit=min(left, 0.5))

    def _send_replies(self, channel: BlockingChannel) -> None:
        while True:
            with self._lock:
                if not self._replies:
                    return
                reply = self._replies[0]
            # NOTE: unconfirmed: the reply queue is the caller's and transient; the durable
            # copy of every prediction is the results store.
            try:
                channel.basic_publish(
                    "",
                    _printable(reply.routing_key, 255),
                    reply.body,
                    pika.BasicProperties(
                        content_type=_JSON,
                        correlation_id=None
                        if reply.correlation_id is None
                        else _printable(reply.correlation_id, 255),
                    ),
                )
            except (ValueError, TypeError, pika.exceptions.ShortStringTooLong) as exc:
                # NOTE: a reply that can never be encoded is dropped (counted), not retried
                # for ever in front of every later reply.
                self.metrics.replies_dropped.inc()
                log.warning("relay: reply to %r dropped: %s", reply.routing_key[:100], exc)
            with self._lock:
                if self._replies and self._replies[0] is reply:
                    self._replies.popleft()

    def _publish_round(self, channel: BlockingChannel) -> bool:
        """Publish one batch of outbox rows; True when more rows may be waiting."""
        limit = self.settings.outbox_batch_rows
        error: BaseException | None = None
        try:
            with self.store.outbox_batch(limit, self.settings.outbox_batch_bytes) as batch:
                try:
                    now = time.monotonic()
                    for row in batch.rows:
                        # NOTE: a destination that refused a message (unbound, full) backs off
                        # alone: its rows are deferred (sorted behind fresh ones), the others
                        # go on. One bad destination never holds up the rest.
                        key = _destination(row)
                        if self._held.get(key, (0.0, 0.0))[0] > now:
                            batch.failed.append(row.id)
                        elif self._publish(channel, row):
                            batch.published.append(row.id)
                            self._held.pop(key, None)
                        else:
                            batch.failed.append(row.id)
                            backoff = self._held.get(key, (0.0, 0.0))[1]
                            backoff = min(max(backoff * 2, 0.5), self.settings.outbox_retry_max_s)
                            self._held[key] = (now + backoff, backoff)
                except _CONNECTION_ERRORS as exc:
                    error = exc  # NOTE: keep what was confirmed; the rest stays for a retry
        except SQLAlchemyError as exc:
            log.warning("relay: results store unavailable (%s)", str(exc).splitlines()[0][:200])
            self._back_off()
            return False
        if error is not None:
            raise error
        self.metrics.events_published.inc(len(batch.published))
        self._backoff = 0.0
        self._delay = 0.2  # NOTE: a round went through: the next reconnect starts quick again
        self._report_backlog()
        return bool(batch.published) and len(batch.rows) == limit

    def _publish(self, channel: BlockingChannel, row: OutboxRow) -> bool:
        event = row.event
        target = event.destination
        if target is None:
            exchange, routing_key, message_id = (
                self.topology.predictions_exchange,
                "",
                event.message_id,
            )
            headers: dict[str, Any] = {
                MODEL_VERSION_HEADER: event.model_version,
                RECORDS_HEADER: event.records,
            }
        else:  # a dead letter
            exchange, routing_key = str(target["exchange"]), str(target["routing_key"])
            message_id = _printable(str(target.get("message_id") or event.message_id), 255)
            headers = {
                key: _printable(value) if isinstance(value, str) else value
                for key, value in dict(target.get("headers") or {}).items()
            }
        try:
            channel.basic_publish(
                exchange,
                routing_key,
                event.body,
                pika.BasicProperties(
                    content_type=_JSON,
                    delivery_mode=2,
                    message_id=message_id,
                    headers=headers,
                ),
                mandatory=True,
            )
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            self.metrics.events_returned.inc()
            log.warning(
                "relay: message %s %s by the broker (%s has no queue bound, or it is full?); "
                "kept in the outbox, retried with backoff",
                event.message_id,
                "returned" if isinstance(exc, pika.exceptions.UnroutableError) else "nacked",
                exchange,
            )
            return False
        return True

    def _next_backoff(self) -> float:
        return min(max(self._backoff * 2, 0.5), self.settings.outbox_retry_max_s)

    def _back_off(self) -> None:
        self._backoff = self._next_backoff()
        self._retry_at = time.monotonic() + self._backoff

    def _report_backlog(self) -> None:
        try:
            pending, oldest = self.store.outbox_backlog()
        except (SQLAlchemyError, AttributeError):
            return
        self.metrics.outbox_pending.set(pending)
        self.metrics.outbox_oldest_seconds.set(oldest or 0.0)


def _destination(row: OutboxRow) -> str:
    target = row.event.destination
    return "" if target is None else f"{target.get('exchange')}/{target.get('routing_key')}"


def _printable(value: str, max_bytes: int | None = None) -> str:
    """A string AMQP can carry: lone surrogates escaped; cut to `max_bytes` UTF-8 bytes."""
    text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if max_bytes is None or len(text.encode()) <= max_bytes:
        return text
    return text.encode()[:max_bytes].decode("utf-8", "ignore")


def run_relay(settings: Settings) -> int:
    """`creditstream relay`: the outbox relay alone (e.g. beside consumers that were killed)."""
    import signal

    from creditstream.metrics import HealthServer
    from creditstream.store import ResultsStore

    metrics, health = ConsumerMetrics(), HealthState()
    # NOTE: /readyz = the relay's publishing connection is open; /healthz = its thread lives
    # (a publish blocked by an alarm is alive: the kubelet must not restart it for that).
    health.model_loaded = health.store_ok = True
    server = None
    if settings.http_port:
        server = HealthServer.from_settings(settings, health, metrics).start()
    store = ResultsStore.from_settings(settings)
    relay = OutboxRelay(settings, store, metrics, health)
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping the relay", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    relay.start()
    try:
        while not stopping.is_set():
            health.broker_connected = health.events_relay_connected
            if relay.alive:
                health.beat()
            time.sleep(0.2)
    finally:
        relay.stop()
        store.dispose()
        if server is not None:
            server.stop()
    return 0
