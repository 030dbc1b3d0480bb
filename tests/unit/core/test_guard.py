"""Bounds on properties: header tables measured without recursion, message ids, reply_to."""

from __future__ import annotations

import datetime as dt
import decimal
import struct
from typing import Any

import pika
import pika.data
import pytest

from creditstream.guard import (
    BAD_PROPERTIES,
    REFUSED_HEADERS,
    GuardedBasicProperties,
    HeaderTableError,
    check_properties,
    measure_table,
    reply_allowed,
)

X_DEATH_LIKE: dict[str, Any] = {
    "x-death": [
        {
            "count": 3,
            "reason": "delivery_limit",
            "queue": "creditstream.requests",
            "time": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "routing-keys": ["score"],
        }
    ],
    "x-creditstream-sent-at-us": 1_700_000_000_000_000,
    "flag": True,
    "none": None,
    "ratio": decimal.Decimal("1.5"),
    "raw": b"\x00\x01",
}


def encoded_table(value: dict[str, Any]) -> bytes:
    pieces: list[bytes] = []
    pika.data.encode_table(pieces, value)
    return b"".join(pieces)


def nested(depth: int) -> bytes:
    """An AMQP field table {"a": {"a": ... {} ...}} nested `depth` deep (linear time)."""
    # NOTE: k levels above the empty table the size is 7k: key "a" (2), tag (1), 4 + 7(k-1).
    levels = [struct.pack(">I", 7 * k) + b"\x01aF" for k in range(depth, 0, -1)]
    return b"".join(levels) + struct.pack(">I", 0)


def test_measure_table_walks_every_type_pika_writes() -> None:
    encoded = encoded_table(X_DEATH_LIKE)
    shape = measure_table(encoded, 0)
    assert shape.end == len(encoded)
    assert shape.depth == 4  # headers > x-death array > table > routing-keys array


def test_measure_table_stops_past_the_depth_bound_without_recursion() -> None:
    assert measure_table(nested(15), 0).depth == 16  # the outer table is level 1
    with pytest.raises(HeaderTableError, match="deeper than 16"):
        measure_table(nested(18_000), 0)  # ~128 KiB, one frame


def properties_frame(headers_table: bytes, **kwargs: Any) -> bytes:
    props = pika.BasicProperties(headers={}, **kwargs)
    encoded = b"".join(props.encode())
    at = 2 + (1 + len(kwargs["content_type"]) if "content_type" in kwargs else 0)
    return encoded[:at] + headers_table + encoded[at + 4 :]


def test_guarded_properties_decode_like_pika_within_bounds() -> None:
    frame = properties_frame(
        encoded_table(X_DEATH_LIKE), content_type="application/json", message_id="m1"
    )
    expected = pika.BasicProperties().decode(frame)
    got = GuardedBasicProperties().decode(frame)
    assert got.headers == expected.headers and got.message_id == "m1"


def test_guarded_properties_replace_a_deep_table_and_keep_the_rest() -> None:
    frame = properties_frame(
        nested(5000), content_type="application/json", message_id="m2", user_id="alice"
    )
    with pytest.raises(RecursionError):
        pika.BasicProperties().decode(frame)
    got = GuardedBasicProperties().decode(frame)
    assert list(got.headers) == [REFUSED_HEADERS]
    assert got.message_id == "m2" and got.content_type == "application/json"
    rejection = check_properties(got)
    assert rejection is not None and rejection.reason == BAD_PROPERTIES


def test_guarded_properties_refuse_a_timestamp_pika_cannot_represent() -> None:
    # {"t": timestamp 2**63}: 14 bytes that made pika raise OverflowError in its I/O loop.
    content = b"\x01tT" + struct.pack(">Q", 2**63)
    frame = properties_frame(
        struct.pack(">I", len(content)) + content, message_id="m3", user_id="alice"
    )
    with pytest.raises(OverflowError):
        pika.BasicProperties().decode(frame)
    got = GuardedBasicProperties().decode(frame)
    assert "OverflowError" in got.headers[REFUSED_HEADERS] and got.message_id == "m3"


@pytest.mark.parametrize(
    ("message_id", "refused"),
    [
        pytest.param("run-000000001", False, id="producer"),
        pytest.param("rpc-0123abcd", False, id="client"),
        pytest.param(None, False, id="none"),
        pytest.param("a/0", True, id="slash"),
        pytest.param("a#0", True, id="hash"),
        pytest.param("m" * 129, True, id="too-long"),
        pytest.param("with space", True, id="space"),
        pytest.param("", True, id="empty"),
    ],
)
def test_message_ids_out_of_bounds_are_refused(message_id: str | None, refused: bool) -> None:
    properties = pika.BasicProperties(message_id=message_id, user_id="alice")
    assert (check_properties(properties) is not None) is refused


@pytest.mark.parametrize(
    ("user_id", "refused"),
    [
        pytest.param("alice", False, id="account"),
        pytest.param(None, True, id="missing"),
        pytest.param("", True, id="empty"),
        pytest.param("u" * 65, True, id="too-long"),
    ],
)
def test_user_id_is_required_and_bounded(user_id: str | None, refused: bool) -> None:
    properties = pika.BasicProperties(message_id="m", user_id=user_id)
    assert (check_properties(properties) is not None) is refused


@pytest.mark.parametrize(
    ("reply_to", "prefixes", "allowed"),
    [
        pytest.param("amq.rabbitmq.reply-to.g1h2AA==", (), True, id="direct"),
        pytest.param("creditstream.dead", (), False, id="dead-letter-queue"),
        pytest.param("creditstream.requests", (), False, id="requests-queue"),
        pytest.param("amq.rabbitmq.reply-to", (), False, id="bare-pseudo-queue"),
        pytest.param("replies.app1", ("replies.",), True, id="configured-prefix"),
        pytest.param("other", ("",), False, id="empty-prefix-allows-nothing"),
    ],
)
def test_reply_to_policy(reply_to: str, prefixes: tuple[str, ...], allowed: bool) -> None:
    assert reply_allowed(reply_to, prefixes) is allowed


def test_a_carried_publisher_is_trusted_only_when_signed_by_the_consumers_key() -> None:
    from creditstream.consumer import _publisher, retry_signing_key, sign_publisher

    key = retry_signing_key("amqp://consumer:secret@broker/")
    signed = sign_publisher(key, "m1", "alice")
    copy = pika.BasicProperties(
        message_id="m1",
        user_id="consumer",
        headers={"x-creditstream-publisher": "alice", "x-creditstream-publisher-signature": signed},
    )
    assert _publisher(copy, "consumer", key) == "alice"
    forged = pika.BasicProperties(
        message_id="m1", user_id="consumer", headers={"x-creditstream-publisher": "alice"}
    )
    assert _publisher(forged, "consumer", key) == "consumer"
    other_key = retry_signing_key("amqp://someone:else@broker/")
    assert _publisher(copy, "consumer", other_key) == "consumer"
    moved = pika.BasicProperties(message_id="m2", user_id="consumer", headers=copy.headers)
    assert _publisher(moved, "consumer", key) == "consumer"  # signature bound to the message id
    from_alice = pika.BasicProperties(message_id="m1", user_id="bob", headers=copy.headers)
    assert _publisher(from_alice, "consumer", key) == "bob"


@pytest.mark.parametrize(
    "field", ["reply_to", "correlation_id", "content_type", "type", "app_id", "content_encoding"]
)
def test_a_property_pika_left_as_bytes_is_refused(field: str) -> None:
    # pika hands a short string that is not UTF-8 over as bytes; str methods then raise.
    properties = pika.BasicProperties(message_id="m", user_id="alice", **{field: b"\xff\xfe"})
    rejection = check_properties(properties)
    assert rejection is not None and field in rejection.detail


def test_reply_allowed_is_false_for_bytes() -> None:
    assert reply_allowed(b"\xffamq.rabbitmq.reply-to.x") is False  # type: ignore[arg-type]
