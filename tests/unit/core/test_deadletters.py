"""Dead-letter plans: bounded, one per rejected record, the whole message once past the bound."""

from __future__ import annotations

import hashlib
import json

import orjson
import pytest

from creditstream.codec import decode_request
from creditstream.deadletters import (
    HEADER_ALLOWANCE,
    SHA256_HEADER,
    TOO_MANY_REJECTIONS,
    DeadLetterLimits,
    plan_dead_letters,
    top_level_spans,
)
from creditstream.topology import INDEX_HEADER, REASON_HEADER

LIMITS = DeadLetterLimits(max_per_message=10, excerpt_bytes=256)
GOOD = {
    "ID": 1,
    **{name: 0 for name in ("LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE")},
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"[1,2,3]", [b"1", b"2", b"3"], id="flat"),
        pytest.param(b' [ {"a": "],[,"} , [[1],[2]] ,"x\\"]" ] ', None, id="strings-and-space"),
        pytest.param(b"[]", [], id="empty"),
        pytest.param(b"[" * 5000 + b"]" * 5000, [b"[" * 4999 + b"]" * 4999], id="deep"),
    ],
)
def test_top_level_spans_slice_each_element(body: bytes, expected: list[bytes] | None) -> None:
    spans = top_level_spans(body)
    assert spans is not None
    elements = [body[start:end] for start, end in spans]
    if expected is None:
        expected = [orjson.dumps(e) for e in orjson.loads(body)]
        elements = [orjson.dumps(orjson.loads(e)) for e in elements]
    assert elements == expected


def test_top_level_spans_of_a_non_array_is_none() -> None:
    assert top_level_spans(b'{"a": [1, 2]}') is None
    assert top_level_spans(b"[1] [2]") is None


def test_each_bad_record_leaves_its_own_bytes_and_the_sum_stays_below_the_body() -> None:
    deep = b"[" * 600 + b"]" * 600  # orjson reads it, cannot write it
    body = b"[" + b",".join([deep, json.dumps(GOOD).encode(), b'"s"', b"7"]) + b"]"
    decoded = decode_request(body, "application/json", max_body_bytes=1 << 20, max_records=100)
    letters = plan_dead_letters("m", body, decoded.rejections, is_batch=True, limits=LIMITS)
    by_index = {letter.headers[INDEX_HEADER]: letter for letter in letters}
    assert sorted(by_index) == [0, 1, 2, 3]
    assert by_index[0].payload == deep[:256]
    assert by_index[0].headers[SHA256_HEADER] == hashlib.sha256(deep).hexdigest()
    assert by_index[2].payload == b'"s"' and by_index[3].payload == b"7"
    assert sum(len(letter.payload) for letter in letters) <= len(body)


def test_more_rejections_than_the_bound_dead_letter_the_body_once() -> None:
    body = json.dumps(list(range(11))).encode()
    decoded = decode_request(body, "application/json", max_body_bytes=1 << 20, max_records=100)
    (letter,) = plan_dead_letters("m", body, decoded.rejections, is_batch=True, limits=LIMITS)
    assert letter.payload == body
    assert letter.headers[REASON_HEADER] == TOO_MANY_REJECTIONS
    assert len(letter.reasons) == 11


def test_a_whole_message_rejection_is_one_bounded_letter() -> None:
    body = b"{" + b"x" * 10_000
    decoded = decode_request(body, "application/json", max_body_bytes=1 << 20, max_records=100)
    (letter,) = plan_dead_letters("m", body, decoded.rejections, is_batch=False, limits=LIMITS)
    assert letter.payload == body[:256]
    assert letter.headers[SHA256_HEADER] == hashlib.sha256(body).hexdigest()


def test_no_rejection_no_letter() -> None:
    assert plan_dead_letters("m", b"{}", [], is_batch=False, limits=LIMITS) == []


@pytest.mark.parametrize("count", [1, 3, 10, 100])
def test_letters_with_their_headers_stay_within_the_body_plus_an_allowance(count: int) -> None:
    body = b"[" + b",".join([b"{}"] * count) + b"]"
    decoded = decode_request(body, "application/json", max_body_bytes=1 << 20, max_records=1000)
    limits = DeadLetterLimits(max_per_message=1000, excerpt_bytes=256)
    letters = plan_dead_letters("m" * 128, body, decoded.rejections, is_batch=True, limits=limits)
    total = sum(len(x.payload) + len(str(x.headers)) + len(x.message_id) for x in letters)
    assert total <= len(body) + HEADER_ALLOWANCE
    assert len(letters) == (count if count <= 3 else 1)
