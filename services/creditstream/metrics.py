"""Prometheus metrics and the /healthz, /readyz, /metrics HTTP endpoints of the consumer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from creditstream.settings import Settings

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
RECORD_OUTCOMES = ("scored", "rejected")
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class ConsumerMetrics:
    """Every consumer metric, in a registry of its own (no process-wide globals)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "creditstream_messages_total",
            "Request messages handled (scored, or rejected whole).",
            registry=r,
        )
        self.records = Counter(
            "creditstream_records_total", "Records handled, by outcome.", ["outcome"], registry=r
        )
        # NOTE: every known outcome is exported from the start (at 0): an absent series would
        # read as "nothing scored" and as "metric missing" alike.
        for outcome in RECORD_OUTCOMES:
            self.records.labels(outcome)
        self.batches = Counter("creditstream_batches_total", "Batches scored.", registry=r)
        self.batch_size = Histogram(
            "creditstream_batch_size_records",
            "Records per ONNX call.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "creditstream_inference_seconds",
            "Wall time of one ONNX call.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store_seconds = Histogram(
            "creditstream_store_seconds",
            "Wall time of one results-store transaction.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "creditstream_end_to_end_seconds",
            "Producer publish to durable result, per message (needs the sent-at header).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_lettered = Counter(
            "creditstream_dead_lettered_total",
            "Records or bodies sent to the dead-letter queue, by reason.",
            ["reason"],
            registry=r,
        )
        self.redelivered = Counter(
            "creditstream_redelivered_messages_total",
            "Messages the broker flagged as redelivered.",
            registry=r,
        )
        self.duplicates = Counter(
            "creditstream_duplicate_records_total",
            "Records already in the results store (idempotent skip).",
            registry=r,
        )
        self.scoring_failures = Counter(
            "creditstream_scoring_failures_total",
            "Scoring attempts that failed for a message (retried later, or dead-lettered "
            "with reason scoring-failed at the delivery limit).",
            registry=r,
        )
        self.retried = Counter(
            "creditstream_retried_messages_total",
            "Messages sent to the retry queue after a scoring failure (they come back later).",
            registry=r,
        )
        self.unroutable = Counter(
            "creditstream_unroutable_publishes_total",
            "Dead letters the broker returned as unroutable or nacked (the request is kept "
            "unacked and the publish retried).",
            registry=r,
        )
        self.store_errors = Counter(
            "creditstream_store_errors_total",
            "Failed results-store transactions (retried).",
            registry=r,
        )
        self.reconnects = Counter(
            "creditstream_broker_reconnects_total",
            "Broker (re)connections after the first.",
            registry=r,
        )
        self.ready = Gauge(
            "creditstream_ready", "1 when broker, model and store are usable.", registry=r
        )
        # --- outbox relay (events after: delayed events do not make a consumer unready) ----
        self.events_published = Counter(
            "creditstream_events_published_total",
            "Prediction event messages the relay published from the outbox (confirmed).",
            registry=r,
        )
        self.events_returned = Counter(
            "creditstream_events_returned_total",
            "Event publishes returned unroutable or nacked by the broker (kept, retried).",
            registry=r,
        )
        self.outbox_pending = Gauge(
            "creditstream_outbox_pending_events",
            "Event messages committed but not yet published (last relay look).",
            registry=r,
        )
        self.outbox_oldest_seconds = Gauge(
            "creditstream_outbox_oldest_event_seconds",
            "Age of the oldest unpublished event message (0 when none).",
            registry=r,
        )
        self.relay_connected = Gauge(
            "creditstream_relay_connected",
            "1 while the relay's publishing connection is open.",
            registry=r,
        )
        self.replies_dropped = Counter(
            "creditstream_replies_dropped_total",
            "RPC replies dropped because reply_buffer was full (the result is in the store).",
            registry=r,
        )


@dataclass
class HealthState:
    """Liveness and readiness as seen by the consumer loop (written by it, read by HTTP)."""

    stall_after_s: float = 120.0
    model_loaded: bool = False
    broker_connected: bool = False
    store_ok: bool = False
    publish_ok: bool = True
    draining: bool = False
    # NOTE: reported, never part of `ready`: delayed events do not stop a consumer consuming.
    events_relay_connected: bool = False
    last_beat: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        """Record that the loop is alive."""
        self.last_beat = time.monotonic()

    @property
    def live(self) -> bool:
        """The loop has turned recently (a stuck loop fails liveness and gets restarted)."""
        return time.monotonic() - self.last_beat < self.stall_after_s

    @property
    def ready(self) -> bool:
        """Able to take work now."""
        return (
            self.model_loaded
            and self.broker_connected
            and self.store_ok
            and self.publish_ok
            and not self.draining
        )

    def describe(self) -> dict[str, Any]:
        """The readiness components, for the /readyz body."""
        return {
            "model_loaded": self.model_loaded,
            "broker_connected": self.broker_connected,
            "store_ok": self.store_ok,
            "publish_ok": self.publish_ok,
            "draining": self.draining,
            "events_relay_connected": self.events_relay_connected,
        }


class HealthServer:
    """/healthz, /readyz and /metrics on one event-loop thread, safe against slow clients.

    NOTE: not http.server: its ThreadingHTTPServer spends a thread per connection and only
    times out single reads, so half-sent or trickled requests held one thread each for ever.
    Here every connection is a coroutine, the whole request (line and headers, at most
    `max_request_bytes`) must arrive within `request_timeout_s`, and at most `max_connections`
    are open: a new one evicts the oldest still sending its request, so a probe's complete
    request is answered even while the limit is taken by stalled clients.
    """

    def __init__(
        self,
        host: str | list[str],
        port: int,
        health: HealthState,
        metrics: ConsumerMetrics,
        *,
        request_timeout_s: float = 5.0,
        max_connections: int = 64,
        max_request_bytes: int = 8192,
    ) -> None:
        self._health, self._metrics = health, metrics
        self._timeout_s = request_timeout_s
        self._max_connections = max_connections
        self._open: set[asyncio.StreamWriter] = set()
        # Connections still sending their request, oldest first (the ones to evict).
        self._receiving: OrderedDict[asyncio.StreamWriter, None] = OrderedDict()
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, host, port, limit=max_request_bytes)
        )
        self.host = host if isinstance(host, str) else ",".join(host)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="health-http", daemon=True
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, health: HealthState, metrics: ConsumerMetrics
    ) -> HealthServer:
        """The server on settings.http_hosts:http_port with the configured limits."""
        return cls(
            settings.http_hosts,
            settings.http_port,
            health,
            metrics,
            request_timeout_s=settings.http_request_timeout_s,
            max_connections=settings.http_max_connections,
        )

    def start(self) -> HealthServer:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection, then end the thread."""

        async def shutdown() -> None:
            self._server.close()
            for writer in list(self._open):
                writer.close()
            await self._server.wait_closed()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        else:
            self._loop.run_until_complete(shutdown())
        self._loop.close()

    # --- per connection (event-loop thread) -------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= self._max_connections:
            if not self._receiving:
                writer.close()  # every slot is busy answering: refuse the newcomer
                return
            oldest, _ = self._receiving.popitem(last=False)
            oldest.close()
        self._open.add(writer)
        self._receiving[writer] = None
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._timeout_s)
            except asyncio.LimitOverrunError:
                head = None
            finally:
                self._receiving.pop(writer, None)
            code, body, content_type = self._respond(head)
            writer.write(_http_response(code, body, content_type))
            await asyncio.wait_for(writer.drain(), self._timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # too slow, gone or evicted: nothing to answer
        finally:
            self._open.discard(writer)
            writer.close()

    def _respond(self, head: bytes | None) -> tuple[int, bytes, str]:
        if head is None:
            return 431, b"request too large\n", "text/plain"
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0].decode("latin-1")
        if method != b"GET":
            return 405, b"only GET\n", "text/plain"
        if not target.startswith("/"):
            return 400, b"bad request\n", "text/plain"
        path = target.split("?", 1)[0]
        state = self._health
        if path == "/metrics":
            self._metrics.ready.set(1 if state.ready else 0)
            return 200, generate_latest(self._metrics.registry), CONTENT_TYPE_LATEST
        if path == "/healthz":
            return (200, b"ok\n", "text/plain") if state.live else (503, b"stalled\n", "text/plain")
        if path == "/readyz":
            body = repr(state.describe()).encode() + b"\n"
            return 200 if state.ready else 503, body, "text/plain"
        return 404, b"not found\n", "text/plain"


def _http_response(code: int, body: bytes, content_type: str) -> bytes:
    reason = HTTPStatus(code).phrase
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
