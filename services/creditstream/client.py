"""Request/reply client: score records through the queue with reply_to + correlation_id.

pika is not thread-safe, so one I/O thread owns the connection; callers on any thread hand it
work with `connection.add_callback_threadsafe` and wait on a Future. Replies arrive through
RabbitMQ's direct reply-to pseudo-queue (no queue per caller to declare or clean up).

A caller may give up on its Future (cancel, or time out, which cancels it): the call is then
forgotten at once, a reply arriving later is dropped, and nothing it does can stop the I/O
thread that every other caller depends on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

import orjson
import pika
import pika.exceptions

from creditstream.broker import BROKER_DOWN_ERRORS, connect
from creditstream.codec import encode_json
from creditstream.topology import REQUEST_ROUTING_KEY, SENT_AT_HEADER, Topology

if TYPE_CHECKING:
    from creditstream.settings import Settings

log = logging.getLogger(__name__)

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

# A fixed, obviously SYNTHETIC record for smoke tests (not a row of the data set).
SMOKE_RECORD: dict[str, Any] = {
    "ID": "smoke-test",
    "LIMIT_BAL": 50000,
    "SEX": 2,
    "EDUCATION": 2,
    "MARRIAGE": 1,
    "AGE": 35,
    "PAY_0": 0,
    "PAY_2": 0,
    "PAY_3": 0,
    "PAY_4": 0,
    "PAY_5": 0,
    "PAY_6": 0,
    "BILL_AMT1": 20000,
    "BILL_AMT2": 19000,
    "BILL_AMT3": 18000,
    "BILL_AMT4": 17000,
    "BILL_AMT5": 16000,
    "BILL_AMT6": 15000,
    "PAY_AMT1": 1500,
    "PAY_AMT2": 1500,
    "PAY_AMT3": 1500,
    "PAY_AMT4": 1500,
    "PAY_AMT5": 1500,
    "PAY_AMT6": 1500,
}


class PredictionError(RuntimeError):
    """No usable reply: timeout, unroutable request, lost connection or a rejected record."""


def _settle(future: Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    """Complete a Future unless its caller already cancelled it (never raises)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass  # cancelled (or settled) meanwhile by its caller


class PredictionClient:
    """Thread-safe scoring client; use as a context manager."""

    def __init__(self, settings: Settings, *, connect_wait_s: float | None = None) -> None:
        self.settings = settings
        self.topology = Topology.from_settings(settings)
        self._connect_wait_s = connect_wait_s
        self._pending: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._outbox: deque[tuple[bytes, str]] = deque()
        self._wake_scheduled = threading.Event()

    def __enter__(self) -> PredictionClient:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Connect, subscribe to direct reply-to and start the I/O thread."""
        connection = connect(self.settings, name="creditstream-client", wait_s=self._connect_wait_s)
        channel = connection.channel()
        self.topology.declare(channel)
        channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
        channel.add_on_return_callback(self._on_returned)
        self._connection, self._channel = connection, channel
        self._thread = threading.Thread(
            target=self._io_loop, name="creditstream-client-io", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop the I/O thread and close the connection."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._connection is not None and self._connection.is_open:
            with contextlib.suppress(*BROKER_DOWN_ERRORS):
                self._connection.close()
        self._fail_all(PredictionError("client closed"))

    # --- I/O thread -----------------------------------------------------------------------
    def _io_loop(self) -> None:
        assert self._connection is not None
        try:
            while not self._closing.is_set():
                self._connection.process_data_events(time_limit=0.1)
        except BROKER_DOWN_ERRORS as exc:
            self._failure = exc
            log.error("client lost the broker connection: %s", exc)
            self._fail_all(PredictionError(f"broker connection lost: {exc}"))
        except Exception as exc:  # NOTE: fail every caller now, not at their timeouts
            self._failure = exc
            log.exception("client I/O thread failed")
            self._fail_all(PredictionError(f"client I/O failed: {exc!r}"))

    def _on_reply(
        self, _channel: Any, _method: Any, props: pika.BasicProperties, body: bytes
    ) -> None:
        with self._lock:
            future = self._pending.pop(props.correlation_id or "", None)
        if future is None:
            return  # a late reply for a caller that gave up (timed out or cancelled)
        try:
            reply = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            _settle(future, error=PredictionError(f"unreadable reply: {exc}"))
        else:
            _settle(future, result=reply)

    def _on_returned(
        self, _channel: Any, _method: Any, props: pika.BasicProperties, _body: bytes
    ) -> None:
        with self._lock:
            future = self._pending.pop(props.correlation_id or "", None)
        if future is not None:
            _settle(
                future,
                error=PredictionError(
                    f"request unroutable: no queue bound to {self.topology.requests_exchange!r}"
                ),
            )

    def _publish_queued(self) -> None:
        """Publish everything callers queued (runs in the I/O thread)."""
        self._wake_scheduled.clear()
        while self._outbox:
            body, correlation_id = self._outbox.popleft()
            with self._lock:
                wanted = correlation_id in self._pending
            if not wanted:
                continue  # its caller gave up before it was sent
            self._channel.basic_publish(
                self.topology.requests_exchange,
                REQUEST_ROUTING_KEY,
                body,
                pika.BasicProperties(
                    content_type="application/json",
                    delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=f"rpc-{correlation_id}",
                    correlation_id=correlation_id,
                    reply_to=DIRECT_REPLY_TO,
                    headers={SENT_AT_HEADER: time.time_ns() // 1000},
                ),
                mandatory=True,
            )

    def _fail_all(self, error: PredictionError) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            _settle(future, error=error)

    # --- caller API (any thread) ----------------------------------------------------------
    def submit(self, payload: dict[str, Any] | list[dict[str, Any]]) -> Future[Any]:
        """Send one request message (a record or a list of records); the Future gets the reply."""
        if self._connection is None or self._failure is not None or self._closing.is_set():
            raise PredictionError("client is not connected")
        correlation_id = uuid.uuid4().hex
        body = encode_json(payload)
        if len(body) > self.settings.max_body_bytes:
            # NOTE: refused here, before it travels: the consumer would dead-letter it unread.
            raise PredictionError(
                f"request body of {len(body)} bytes is over max_body_bytes "
                f"({self.settings.max_body_bytes}): send fewer records per request"
            )
        future: Future[Any] = Future()
        with self._lock:
            self._pending[correlation_id] = future
        # NOTE: however the Future ends (reply, error, cancel, timeout), the call is forgotten.
        future.add_done_callback(lambda _done: self._forget(correlation_id))
        self._outbox.append((body, correlation_id))
        # NOTE: one wake-up of the I/O thread per burst of submits, not one per request.
        if not self._wake_scheduled.is_set():
            self._wake_scheduled.set()
            self._connection.add_callback_threadsafe(self._publish_queued)
        return future

    @property
    def in_flight(self) -> int:
        """Calls sent (or queued) whose reply is still awaited."""
        with self._lock:
            return len(self._pending)

    def _forget(self, correlation_id: str) -> None:
        with self._lock:
            self._pending.pop(correlation_id, None)

    def predict(self, record: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
        """Score one record; raises PredictionError on timeout or if the record was rejected."""
        reply = self._wait([self.submit(record)], timeout)[0]
        if "error" in reply:
            raise PredictionError(f"record rejected: {reply['error']}: {reply.get('detail')}")
        return dict(reply)

    def predict_many(
        self, records: list[dict[str, Any]], *, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Score records concurrently, one message each; results (or error entries) in order.

        `timeout` bounds the whole call; on failure every unanswered call is cancelled.
        """
        futures = [self.submit(record) for record in records]
        return [dict(reply) for reply in self._wait(futures, timeout)]

    @staticmethod
    def _wait(futures: list[Future[Any]], timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        try:
            return [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
        except FutureTimeout as exc:
            raise PredictionError(f"no reply within {timeout:g}s: is a consumer running?") from exc
        finally:
            for future in futures:
                future.cancel()  # NOTE: no-op for answered calls; forgets the others


def run_smoke_test(settings: Settings, *, timeout: float) -> int:
    """Score SMOKE_RECORD end to end; 0 when a valid prediction comes back."""
    started = time.perf_counter()
    try:
        with PredictionClient(settings) as client:
            prediction = client.predict(SMOKE_RECORD, timeout=timeout)
    except (PredictionError, *BROKER_DOWN_ERRORS) as exc:  # type: ignore[misc]
        log.error("smoke test failed: %s", exc)
        return 1
    probability = prediction.get("probability")
    if not isinstance(probability, float) or not 0.0 <= probability <= 1.0:
        log.error("smoke test got an invalid prediction: %s", prediction)
        return 1
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(
        json.dumps(
            {
                "smoke_test": "passed",
                "round_trip_ms": round(elapsed_ms, 1),
                "prediction": prediction,
            }
        )
    )
    return 0
