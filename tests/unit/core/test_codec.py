"""The record codec and validator against the contract and its generated JSON Schema."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from creditstream.codec import RejectReason, ValidRecord, decode_request, validate_record
from creditstream.contract import FEATURES, record_json_schema

pytestmark = pytest.mark.unit

GOOD: dict[str, Any] = {
    "ID": 7,
    "LIMIT_BAL": 20000,
    "SEX": 2,
    "EDUCATION": 2,
    "MARRIAGE": 1,
    "AGE": 24,
    "PAY_0": 2,
    "PAY_2": 2,
    "PAY_3": -1,
    "PAY_4": -1,
    "PAY_5": -2,
    "PAY_6": -2,
    "BILL_AMT1": 3913,
    "BILL_AMT2": 3102,
    "BILL_AMT3": 689,
    "BILL_AMT4": 0,
    "BILL_AMT5": 0,
    "BILL_AMT6": 0,
    "PAY_AMT1": 0,
    "PAY_AMT2": 689.5,
    "PAY_AMT3": 0,
    "PAY_AMT4": 0,
    "PAY_AMT5": 0,
    "PAY_AMT6": 0,
}
LIMITS = {"max_body_bytes": 4096, "max_records": 3}


def with_(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


def test_good_record_is_accepted_unchanged() -> None:
    outcome = validate_record(GOOD)
    assert isinstance(outcome, ValidRecord)
    assert outcome.record_id == 7
    assert outcome.features == tuple(GOOD[name] for name in FEATURES)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        pytest.param([], RejectReason.NOT_OBJECT, id="array-as-record"),
        pytest.param("x", RejectReason.NOT_OBJECT, id="string"),
        pytest.param(without("AGE"), RejectReason.MISSING, id="missing-field"),
        pytest.param(without("ID"), RejectReason.MISSING, id="missing-id"),
        pytest.param(with_(EXTRA=1), RejectReason.EXTRA, id="extra-field"),
        pytest.param(with_(SEX=3), RejectReason.RANGE, id="sex-out-of-range"),
        pytest.param(with_(EDUCATION=7), RejectReason.RANGE, id="education-out-of-range"),
        pytest.param(with_(PAY_0=-3), RejectReason.RANGE, id="pay-status-below"),
        pytest.param(with_(PAY_AMT1=-1), RejectReason.RANGE, id="negative-payment"),
        pytest.param(with_(LIMIT_BAL=0), RejectReason.RANGE, id="zero-limit"),
        pytest.param(with_(AGE=1.5), RejectReason.TYPE, id="fractional-age"),
        pytest.param(with_(AGE="24"), RejectReason.TYPE, id="string-number"),
        pytest.param(with_(SEX=True), RejectReason.TYPE, id="boolean"),
        pytest.param(with_(AGE=None), RejectReason.TYPE, id="null"),
        pytest.param(with_(BILL_AMT1=float("inf")), RejectReason.NOT_FINITE, id="infinity"),
        pytest.param(with_(BILL_AMT1=float("nan")), RejectReason.NOT_FINITE, id="nan"),
        pytest.param(with_(ID=-1), RejectReason.BAD_ID, id="negative-id"),
        pytest.param(with_(ID=""), RejectReason.BAD_ID, id="empty-id"),
        pytest.param(with_(ID=1.0), RejectReason.BAD_ID, id="float-id"),
    ],
)
def test_bad_record_is_rejected_with_reason(record: Any, reason: str) -> None:
    outcome = validate_record(record, index=4)
    assert not isinstance(outcome, ValidRecord)
    assert outcome.reason == reason
    assert outcome.index == 4
    assert outcome.detail


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        pytest.param(b"{not json", "application/json", RejectReason.MALFORMED_JSON, id="malformed"),
        pytest.param(b"\xff\xfe", "application/json", RejectReason.ENCODING, id="not-utf8"),
        pytest.param(
            json.dumps(GOOD).encode(), "text/plain", RejectReason.CONTENT_TYPE, id="content-type"
        ),
        pytest.param(b"[]", "application/json", RejectReason.EMPTY, id="empty-array"),
        pytest.param(
            json.dumps([GOOD] * 4).encode(),
            "application/json",
            RejectReason.TOO_MANY,
            id="too-many-records",
        ),
        pytest.param(b" " * 5000, "application/json", RejectReason.TOO_LARGE, id="oversized"),
        pytest.param(
            b'{"ID": NaN}', "application/json", RejectReason.MALFORMED_JSON, id="nan-literal"
        ),
        pytest.param(
            b"[" * 100_000, "application/json", RejectReason.TOO_LARGE, id="deep-nesting-oversized"
        ),
    ],
)
def test_bad_body_is_rejected_whole(body: bytes, content_type: str, reason: str) -> None:
    decoded = decode_request(body, content_type, **LIMITS)
    assert decoded.records == []
    assert [r.reason for r in decoded.rejections] == [reason]
    assert decoded.rejections[0].index is None


def test_deeply_nested_json_within_size_is_malformed_not_a_crash() -> None:
    decoded = decode_request(
        b"[" * 3000 + b"]" * 3000, "application/json", max_body_bytes=10_000, max_records=3
    )
    assert decoded.records == []
    assert len(decoded.rejections) == 1


def test_batch_keeps_good_records_and_rejects_bad_ones_alone() -> None:
    body = json.dumps([GOOD, with_(SEX=9), with_(ID=8)]).encode()
    decoded = decode_request(body, "application/json", **LIMITS)
    assert decoded.is_batch
    assert [r.index for r in decoded.records] == [0, 2]
    assert [(r.index, r.reason) for r in decoded.rejections] == [(1, RejectReason.RANGE)]


def test_missing_content_type_is_accepted_as_json() -> None:
    decoded = decode_request(json.dumps(GOOD).encode(), None, **LIMITS)
    assert len(decoded.records) == 1


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(GOOD, id="good"),
        pytest.param(with_(ID="client-9"), id="string-id"),
        pytest.param(with_(SEX=3), id="bad-range"),
        pytest.param(with_(AGE=24.5), id="bad-integer"),
        pytest.param(without("PAY_6"), id="missing"),
        pytest.param(with_(X=1), id="extra"),
        pytest.param(with_(SEX=True), id="boolean"),
    ],
)
def test_validator_agrees_with_the_published_json_schema(record: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(record_json_schema())
    schema_ok = validator.is_valid(record)
    codec_ok = isinstance(validate_record(record), ValidRecord)
    # NOTE: JSON Schema treats `true` as non-integer too, so both must agree on every case.
    assert schema_ok == codec_ok
