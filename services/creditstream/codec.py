"""Request/prediction codec and record validator (pure: no broker, no model, no database)."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from creditstream.contract import (
    FEATURE_SPECS,
    FEATURES,
    ID_FIELD,
    ID_MAX_INTEGER,
    ID_MAX_LENGTH,
)

JSON_CONTENT_TYPES: Final = frozenset({"application/json", "application/json; charset=utf-8"})
_EXPECTED_KEYS: Final = frozenset((ID_FIELD, *FEATURES))
_SPECS: Final = tuple(FEATURE_SPECS[name] for name in FEATURES)

# Fast path: C-level getters and comparisons over all fields at once; any doubt falls back to
# the field-by-field check, which also words the reason.
_ALL_VALUES: Final = operator.itemgetter(*FEATURES)
_INTEGER_VALUES: Final = operator.itemgetter(*(s.name for s in _SPECS if s.integer))
_LOWER: Final = tuple(s.minimum for s in _SPECS)
_UPPER: Final = tuple(s.maximum for s in _SPECS)
_INT_ONLY: Final = frozenset({int})
_NUMBER_TYPES: Final = frozenset({int, float})


class RejectReason:
    """Machine-readable reasons carried in the `x-creditstream-reason` dead-letter header."""

    CONTENT_TYPE = "wrong-content-type"
    TOO_LARGE = "body-too-large"
    ENCODING = "not-utf8"
    MALFORMED_JSON = "malformed-json"
    NOT_OBJECT = "not-an-object"
    EMPTY = "empty-array"
    TOO_MANY = "too-many-records"
    MISSING = "missing-field"
    EXTRA = "unexpected-field"
    TYPE = "wrong-type"
    NOT_FINITE = "not-finite"
    RANGE = "out-of-range"
    BAD_ID = "bad-id"


@dataclass(frozen=True, slots=True)
class Rejection:
    """One record (or a whole body, index None) that failed validation, with the reason."""

    reason: str
    detail: str
    index: int | None = None
    raw: Any = None


@dataclass(frozen=True, slots=True)
class ValidRecord:
    """A record that passed validation: its id, its position in the message, its 23 features."""

    record_id: int | str
    index: int
    features: tuple[float, ...]


@dataclass
class DecodedMessage:
    """A decoded request body: the valid records, the rejected ones, and its shape."""

    records: list[ValidRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    is_batch: bool = False


def validate_record(obj: Any, index: int = 0) -> ValidRecord | Rejection:
    """Check one decoded JSON value against the record contract."""
    if type(obj) is dict and obj.keys() == _EXPECTED_KEYS:
        values = _ALL_VALUES(obj)
        record_id = obj[ID_FIELD]
        id_type = type(record_id)
        types = set(map(type, values))
        if (
            # all ints (the common case), or numbers with whole-number codes
            (
                types == _INT_ONLY
                or (types <= _NUMBER_TYPES and set(map(type, _INTEGER_VALUES(obj))) == _INT_ONLY)
            )
            and all(map(operator.le, _LOWER, values))
            and all(map(operator.le, values, _UPPER))
            and (
                (id_type is int and 0 <= record_id <= ID_MAX_INTEGER)
                or (id_type is str and 0 < len(record_id) <= ID_MAX_LENGTH)
            )
        ):
            return ValidRecord(record_id, index, values)
    return _validate_slowly(obj, index)


def _validate_slowly(obj: Any, index: int) -> ValidRecord | Rejection:
    """Field-by-field check that names the first problem it finds."""
    if not isinstance(obj, dict):
        return Rejection(
            RejectReason.NOT_OBJECT, f"record is {type(obj).__name__}, not an object", index, obj
        )
    keys = obj.keys()
    if keys != _EXPECTED_KEYS:
        missing = sorted(_EXPECTED_KEYS - keys)
        if missing:
            return Rejection(
                RejectReason.MISSING, f"missing field(s): {', '.join(missing)}", index, obj
            )
        extra = sorted(str(k) for k in keys - _EXPECTED_KEYS)
        return Rejection(RejectReason.EXTRA, f"unexpected field(s): {', '.join(extra)}", index, obj)

    record_id = obj[ID_FIELD]
    if isinstance(record_id, bool) or not (
        (isinstance(record_id, int) and 0 <= record_id <= ID_MAX_INTEGER)
        or (isinstance(record_id, str) and 0 < len(record_id) <= ID_MAX_LENGTH)
    ):
        return Rejection(
            RejectReason.BAD_ID,
            f"ID must be an integer >= 0 or a string of 1..{ID_MAX_LENGTH} characters",
            index,
            obj,
        )

    values: list[float] = []
    for spec in _SPECS:
        value = obj[spec.name]
        # NOTE: bool is a subclass of int; `true` is not a number in this contract.
        if isinstance(value, bool) or not isinstance(value, int | float):
            return Rejection(
                RejectReason.TYPE,
                f"{spec.name} must be a number, got {type(value).__name__}",
                index,
                obj,
            )
        if isinstance(value, float):
            if not math.isfinite(value):
                return Rejection(RejectReason.NOT_FINITE, f"{spec.name} is not finite", index, obj)
            if spec.integer and not value.is_integer():
                return Rejection(
                    RejectReason.TYPE,
                    f"{spec.name} must be a whole number, got {value}",
                    index,
                    obj,
                )
        if not spec.minimum <= value <= spec.maximum:
            return Rejection(
                RejectReason.RANGE,
                f"{spec.name}={value} outside [{spec.minimum:g}, {spec.maximum:g}]",
                index,
                obj,
            )
        values.append(float(value))
    return ValidRecord(record_id, index, tuple(values))


def decode_request(
    body: bytes,
    content_type: str | None,
    *,
    max_body_bytes: int,
    max_records: int,
) -> DecodedMessage:
    """Decode a request body into valid records and per-record rejections; never raises."""
    decoded = DecodedMessage()
    if content_type is not None and content_type.lower() not in JSON_CONTENT_TYPES:
        decoded.rejections.append(
            Rejection(
                RejectReason.CONTENT_TYPE, f"content_type {content_type!r} is not application/json"
            )
        )
        return decoded
    if len(body) > max_body_bytes:
        decoded.rejections.append(
            Rejection(RejectReason.TOO_LARGE, f"body of {len(body)} bytes > {max_body_bytes}")
        )
        return decoded
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        decoded.rejections.append(Rejection(RejectReason.ENCODING, f"body is not UTF-8: {exc}"))
        return decoded
    try:
        # NOTE: orjson is strict JSON: NaN/Infinity literals, numbers that overflow a double
        # and nesting deeper than 1024 are errors, as the contract wants.
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        decoded.rejections.append(Rejection(RejectReason.MALFORMED_JSON, str(exc)[:200]))
        return decoded

    if isinstance(payload, list):
        decoded.is_batch = True
        if not payload:
            decoded.rejections.append(Rejection(RejectReason.EMPTY, "empty array of records"))
            return decoded
        if len(payload) > max_records:
            decoded.rejections.append(
                Rejection(RejectReason.TOO_MANY, f"{len(payload)} records > {max_records}")
            )
            return decoded
        items = payload
    else:
        items = [payload]
    for index, item in enumerate(items):
        outcome = validate_record(item, index)
        if isinstance(outcome, ValidRecord):
            decoded.records.append(outcome)
        else:
            decoded.rejections.append(outcome)
    return decoded


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, the wire format of every creditstream message."""
    return orjson.dumps(value)


def encode_records(records: list[dict[str, Any]]) -> bytes:
    """Encode request records: a bare object for one record, an array for several."""
    return encode_json(records[0] if len(records) == 1 else records)
