"""Micro-batching (pure): messages → one feature matrix; probabilities → per-message results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from creditstream.codec import Rejection, ValidRecord
from creditstream.contract import N_FEATURES


def request_id_for(message_id: str, index: int, is_batch: bool, publisher: str = "") -> str:
    """The idempotency key of one record: a redelivered message maps to the same keys.

    `publisher/message_id` for a single record, `publisher/message_id#index` for a record of a
    batch. The publisher is the AMQP user_id (RabbitMQ checks it against the connection's user)
    and message ids hold neither `/` nor `#` (creditstream.guard), so a key reads back one way
    only: accounts cannot collide, and neither can the single and batch forms.
    """
    key = f"{publisher}/{message_id}"
    return f"{key}#{index}" if is_batch else key


@dataclass(slots=True)
class PendingMessage:
    """One delivery waiting in the batch: its broker handle, metadata and decoded records."""

    delivery_tag: int
    message_id: str
    records: list[ValidRecord]
    rejections: list[Rejection]
    is_batch: bool
    received_at: float
    sent_at: float | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    redelivered: bool = False
    body: bytes = b""
    attempt: int = 0
    properties: Any = None
    publisher: str = ""
    source: str = "live"


@dataclass(frozen=True, slots=True)
class Prediction:
    """The result of scoring one record."""

    request_id: str
    message_id: str
    record_id: int | str
    probability: float
    is_default: bool
    threshold: float
    model_version: str
    received_at: float
    scored_at: float
    source: str = "live"

    def as_event(self) -> dict[str, Any]:
        """JSON shape published to the predictions exchange and to reply_to."""
        return {
            "request_id": self.request_id,
            "record_id": self.record_id,
            "probability": self.probability,
            "is_default": self.is_default,
            "threshold": self.threshold,
            "model_version": self.model_version,
            "scored_at": self.scored_at,
            "source": self.source,
        }


@dataclass
class MicroBatch:
    """Accumulates messages until `max_records` records or the flush deadline."""

    max_records: int
    messages: list[PendingMessage] = field(default_factory=list)
    n_records: int = 0
    opened_at: float | None = None

    def add(self, message: PendingMessage, now: float) -> None:
        """Append one message (its records count towards the batch size); `now` is monotonic."""
        if self.opened_at is None:
            self.opened_at = now
        self.messages.append(message)
        self.n_records += len(message.records)

    @property
    def is_full(self) -> bool:
        """True when the batch holds at least max_records records."""
        return self.n_records >= self.max_records

    def is_due(self, now: float, timeout_s: float) -> bool:
        """True when the oldest message has waited `timeout_s` seconds."""
        return self.opened_at is not None and now - self.opened_at >= timeout_s

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def last_delivery_tag(self) -> int:
        """Highest delivery tag in the batch (for basic_ack multiple=True)."""
        return self.messages[-1].delivery_tag

    def features(self) -> np.ndarray:
        """The float32 [n_records, 23] matrix for one ONNX call, in message order."""
        rows = [record.features for message in self.messages for record in message.records]
        # NOTE: a pipeline's score stage batches engineered vectors (wider than 23).
        width = len(rows[0]) if rows else N_FEATURES
        return np.array(rows, dtype=np.float32).reshape(len(rows), width)

    def predictions(
        self,
        probabilities: Sequence[float] | np.ndarray,
        *,
        threshold: float,
        model_version: str,
        scored_at: float,
    ) -> list[list[Prediction]]:
        """Split one probability vector back into per-message predictions."""
        if len(probabilities) != self.n_records:
            raise ValueError(f"{len(probabilities)} probabilities for {self.n_records} records")
        values = np.asarray(probabilities, dtype=np.float64).tolist()
        per_message: list[list[Prediction]] = []
        row = 0
        for message in self.messages:
            results = []
            for record in message.records:
                p = values[row]
                row += 1
                results.append(
                    Prediction(
                        request_id=request_id_for(
                            message.message_id, record.index, message.is_batch, message.publisher
                        ),
                        message_id=message.message_id,
                        record_id=record.record_id,
                        probability=p,
                        is_default=p >= threshold,
                        threshold=threshold,
                        model_version=model_version,
                        received_at=message.received_at,
                        scored_at=scored_at,
                        source=message.source,
                    )
                )
            per_message.append(results)
        return per_message


def reply_body(message: PendingMessage, predictions: list[Prediction]) -> Any:
    """The reply for one request: predictions and rejections in record order.

    A single-record request gets one object; a batch request an array with one entry per
    record (a prediction, or `{"record_index", "error", "detail"}` for a rejected record).
    """
    entries: list[tuple[int, dict[str, Any]]] = [
        (record.index, prediction.as_event())
        for record, prediction in zip(message.records, predictions, strict=True)
    ]
    entries.extend(
        (
            rejection.index if rejection.index is not None else -1,
            {
                "record_index": rejection.index,
                "error": rejection.reason,
                "detail": rejection.detail,
            },
        )
        for rejection in message.rejections
    )
    entries.sort(key=lambda item: item[0])
    bodies = [body for _, body in entries]
    if not message.is_batch and len(bodies) == 1:
        return bodies[0]
    return bodies
