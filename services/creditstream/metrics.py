"""Prometheus metrics and the /healthz, /readyz, /metrics HTTP endpoints of the consumer."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

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
            "Messages whose scoring failed (requeued).",
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


@dataclass
class HealthState:
    """Liveness and readiness as seen by the consumer loop (written by it, read by HTTP)."""

    stall_after_s: float = 120.0
    model_loaded: bool = False
    broker_connected: bool = False
    store_ok: bool = False
    draining: bool = False
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
        return self.model_loaded and self.broker_connected and self.store_ok and not self.draining

    def describe(self) -> dict[str, Any]:
        """The readiness components, for the /readyz body."""
        return {
            "model_loaded": self.model_loaded,
            "broker_connected": self.broker_connected,
            "store_ok": self.store_ok,
            "draining": self.draining,
        }


class HealthServer:
    """A small threaded HTTP server for probes and Prometheus scraping."""

    def __init__(self, host: str, port: int, health: HealthState, metrics: ConsumerMetrics):
        state, registry, gauge = health, metrics.registry, metrics.ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    gauge.set(1 if state.ready else 0)
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = state.live
                    self._send(200 if ok else 503, b"ok\n" if ok else b"stalled\n")
                elif path == "/readyz":
                    body = repr(state.describe()).encode() + b"\n"
                    self._send(200 if state.ready else 503, body)
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # NOTE: probes every few seconds would flood the logs

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    def start(self) -> HealthServer:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down."""
        self._server.shutdown()
        self._server.server_close()
