"""Pure stage transforms: raw CSV strings → request contract → engineered vectors (issue 11).

Messages between stages are JSON objects `{"batch": bool, "items": [...]}`; each item keeps the
record's index in the producer's message, so a record's request id at the sink is the same
whichever stage was redelivered or restarted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson

from creditstream.codec import (
    DecodedMessage,
    Rejection,
    RejectReason,
    ValidRecord,
    decode_request,
    encode_json,
    validate_record,
)
from creditstream.contract import FEATURES, ID_FIELD

_INTEGER: Final = re.compile(r"[+-]?\d+")
BAD_ENVELOPE: Final = "bad-stage-message"


@dataclass
class StageOutput:
    """What a stage makes of one input message: the next body (None: nothing left) + rejects."""

    body: bytes | None
    rejections: list[Rejection] = field(default_factory=list)
    n_in: int = 0
    n_out: int = 0


def coerce_raw(raw: Any) -> Any:
    """A raw CSV row (strings, as a bank exports it) as the request contract's numbers.

    Whole numbers become ints, others floats; what cannot be parsed stays as it is, so the
    contract's validator names the problem. Columns outside the contract (the label) go.
    """
    if not isinstance(raw, dict):
        return raw
    record: dict[str, Any] = {}
    for key in (ID_FIELD, *FEATURES):
        if key not in raw:
            continue
        value = raw[key]
        if isinstance(value, str):
            text = value.strip()
            if not text:
                continue  # NOTE: an empty CSV cell is a missing value (reason missing-field)
            # NOTE: never raises: a cell int() or float() refuses (more than 4,300 digits,
            # "1_000", text) stays a string, which the validator rejects as wrong-type.
            number: int | float | None = None
            if "_" not in text:
                try:
                    number = int(text) if _INTEGER.fullmatch(text) else float(text)
                except (ValueError, OverflowError):
                    number = None
            if isinstance(number, float) and math.isfinite(number) and number.is_integer():
                number = int(number)
            if number is not None:
                value = number
            if key == ID_FIELD and isinstance(value, str):
                value = text
        record[key] = value
    return record


def preprocess(
    body: bytes, content_type: str | None, *, max_body_bytes: int, max_records: int
) -> StageOutput:
    """Parse, coerce, validate: raw rows in, request-contract records out (bad rows rejected)."""
    decoded = decode_request(
        body, content_type, max_body_bytes=max_body_bytes, max_records=max_records
    )
    # NOTE: decode_request validates numbers; raw rows are strings, so re-validate each raw
    # item after coercion (the body-level checks above stand: size, encoding, JSON, count).
    if decoded.rejections and decoded.rejections[0].index is None:
        return StageOutput(None, decoded.rejections, 0, 0)
    payload = orjson.loads(body)
    items = payload if isinstance(payload, list) else [payload]
    out: list[dict[str, Any]] = []
    rejections: list[Rejection] = []
    for index, raw in enumerate(items):
        outcome = validate_record(coerce_raw(raw), index)
        if isinstance(outcome, ValidRecord):
            out.append({"index": index, "record": _contract_record(outcome)})
        else:
            rejections.append(Rejection(outcome.reason, outcome.detail, index, raw))
    body_out = encode_json({"batch": isinstance(payload, list), "items": out}) if out else None
    return StageOutput(body_out, rejections, len(items), len(out))


def _contract_record(record: ValidRecord) -> dict[str, Any]:
    values = {
        name: int(value) if float(value).is_integer() else value
        for name, value in zip(FEATURES, record.features, strict=True)
    }
    return {ID_FIELD: record.record_id, **values}


@dataclass
class Envelope:
    """A decoded stage message: whether the producer sent an array, and its items."""

    batch: bool
    items: list[dict[str, Any]]


def read_envelope(body: bytes) -> Envelope | Rejection:
    """The inter-stage JSON envelope, or a whole-message rejection."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Rejection(RejectReason.MALFORMED_JSON, str(exc)[:200])
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("batch"), bool)
        or not isinstance(payload.get("items"), list)
        or not all(
            isinstance(item, dict) and isinstance(item.get("index"), int)
            for item in payload["items"]
        )
    ):
        return Rejection(BAD_ENVELOPE, "expected {batch: bool, items: [{index, ...}]}")
    return Envelope(payload["batch"], payload["items"])


def features_batch(
    bodies: list[bytes], engineer: Callable[[np.ndarray], np.ndarray]
) -> list[StageOutput]:
    """Engineered vectors for a batch of preprocess outputs, with ONE call of `engineer`."""
    envelopes: list[Envelope | Rejection] = [read_envelope(body) for body in bodies]
    per_message: list[list[tuple[int, Any, tuple[float, ...]]]] = []
    outputs: list[StageOutput] = []
    for envelope in envelopes:
        rows: list[tuple[int, Any, tuple[float, ...]]] = []
        rejections: list[Rejection] = []
        if isinstance(envelope, Rejection):
            rejections.append(envelope)
        else:
            for item in envelope.items:
                # NOTE: the record came out of preprocess; checked again so a message from
                # elsewhere cannot feed the model anything outside the contract.
                outcome = validate_record(item.get("record"), item["index"])
                if isinstance(outcome, ValidRecord):
                    rows.append((item["index"], outcome.record_id, outcome.features))
                else:
                    rejections.append(outcome)
        per_message.append(rows)
        outputs.append(StageOutput(None, rejections, len(rows) + len(rejections), len(rows)))
    flat = [features for rows in per_message for _, _, features in rows]
    vectors = engineer(np.asarray(flat, dtype=np.float32)) if flat else np.zeros((0, 0), np.float32)
    values = vectors.astype(np.float64).tolist()  # float32 → float64 is exact; JSON round-trips it
    row = 0
    for envelope, rows, output in zip(envelopes, per_message, outputs, strict=True):
        if isinstance(envelope, Rejection) or not rows:
            continue
        items = []
        for index, record_id, _ in rows:
            items.append({"index": index, ID_FIELD: record_id, "engineered": values[row]})
            row += 1
        output.body = encode_json({"batch": envelope.batch, "items": items})
    return outputs


def decode_engineered(width: int) -> Callable[[bytes, str | None, dict[str, Any]], DecodedMessage]:
    """The score stage's decoder (the fused consumer's `InputMode.decode`)."""

    def decode(body: bytes, _content_type: str | None, _headers: dict[str, Any]) -> DecodedMessage:
        decoded = DecodedMessage()
        envelope = read_envelope(body)
        if isinstance(envelope, Rejection):
            decoded.rejections.append(envelope)
            return decoded
        decoded.is_batch = envelope.batch
        for item in envelope.items:
            vector = item.get("engineered")
            record_id = item.get(ID_FIELD)
            if (
                isinstance(vector, list)
                and len(vector) == width
                and all(type(v) in (int, float) and math.isfinite(v) for v in vector)
                and isinstance(record_id, int | str)
                and not isinstance(record_id, bool)
            ):
                decoded.records.append(ValidRecord(record_id, item["index"], tuple(vector)))
            else:
                decoded.rejections.append(
                    Rejection(
                        RejectReason.TYPE,
                        f"expected ID and {width} finite engineered features",
                        item["index"],
                        item,
                    )
                )
        return decoded

    return decode
