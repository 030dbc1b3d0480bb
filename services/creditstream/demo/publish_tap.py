"""Publish time of every request of a demo run, from a copy of the requests exchange.

The producer stamps each message with its publish time (the `x-creditstream-sent-at` header,
µs since the epoch, the same stamp the consumer's end-to-end histogram uses). The tap binds a
queue of its own to the run's requests exchange with the requests' routing key, so the broker
hands it a copy of every request, and keeps `message_id -> publish time`. Joined with the
`scored_at` of the stored rows this gives each record's publish -> stored latency, which the
per-burst summary splits into records published before the burst's first consumer was ready
and the rest.

NOTE: the copy queue is exclusive and auto-delete (it disappears with the tap's connection,
whatever happens) and non-durable, so the copies cost the broker no disk writes. pika is not
thread-safe: the tap's thread owns its connection and nothing else touches it.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions

from creditstream.broker import connection_parameters
from creditstream.topology import REQUEST_ROUTING_KEY, SENT_AT_HEADER

if TYPE_CHECKING:
    from creditstream.settings import Settings

log = logging.getLogger(__name__)

_PREFETCH = 2000


class PublishTap:
    """Records `message_id -> publish time` (epoch s) of every request published to the run."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._sent_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._bound = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="publish-tap", daemon=True)

    def start(self, timeout_s: float = 10.0) -> None:
        """Bind the copy queue; returns once copies are flowing (raises if it could not bind)."""
        self._thread.start()
        if not self._bound.wait(timeout_s) or self.error:
            raise RuntimeError(f"publish tap did not bind: {self.error or 'timed out'}")

    def _run(self) -> None:
        try:
            connection = pika.BlockingConnection(
                connection_parameters(self._settings, name="creditstream-demo-publish-tap")
            )
        except pika.exceptions.AMQPError as exc:
            self.error = repr(exc)
            self._bound.set()
            return
        try:
            channel = connection.channel()
            frame = channel.queue_declare("", exclusive=True, auto_delete=True, durable=False)
            queue = frame.method.queue
            channel.queue_bind(queue, self._settings.requests_exchange, REQUEST_ROUTING_KEY)
            channel.basic_qos(prefetch_count=_PREFETCH)
            self._bound.set()
            for _method, props, _body in channel.consume(
                queue, auto_ack=True, inactivity_timeout=0.2
            ):
                if self._stop.is_set():
                    break
                if props is not None:
                    self._record(props)
        except pika.exceptions.AMQPError as exc:
            self.error = repr(exc)
            log.warning("publish tap stopped: %r", exc)
        finally:
            self._bound.set()
            if connection.is_open:
                connection.close()

    def _record(self, props: Any) -> None:
        sent_at = (props.headers or {}).get(SENT_AT_HEADER)
        if props.message_id and isinstance(sent_at, int) and not isinstance(sent_at, bool):
            with self._lock:
                # NOTE: a republished message (unconfirmed, same id) keeps its first stamp.
                self._sent_at.setdefault(props.message_id, sent_at / 1e6)

    def sent_at(self) -> dict[str, float]:
        """message_id -> publish time (epoch seconds) of every copy seen so far."""
        with self._lock:
            return dict(self._sent_at)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop consuming and close the connection (the copy queue goes with it)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
