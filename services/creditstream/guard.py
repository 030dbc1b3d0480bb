"""Bounds on what a sender controls besides the body (pure: no I/O).

- The headers table is measured before pika decodes it (pika's decoder recurses once per level:
  a table nested 5,000 deep raised RecursionError inside the I/O loop and dropped the connection,
  and the redelivery dropped it again, forever). A table out of bounds is replaced by a one-field
  marker table, so the message is delivered and dead-lettered instead.
- message_id: bounded length and a character set without `/` and `#` (they separate the parts of
  an idempotency key), so the store's columns and the keys cannot be overrun or confused.
- user_id: required. RabbitMQ refuses a publish whose user_id is not the connection's user, so
  it names the publishing account; idempotency keys are namespaced by it (one account cannot
  suppress another's results by reusing its message ids).
- reply_to: only RabbitMQ's direct reply-to pseudo-queue (or a configured prefix): a sender
  cannot make the consumer publish into another queue.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import pika.spec

from creditstream.codec import Rejection
from creditstream.topology import RESULT_SOURCE_HEADER, RESULT_SOURCES

BAD_PROPERTIES: Final = "bad-properties"
REFUSED_HEADERS: Final = "x-creditstream-refused-headers"
DIRECT_REPLY_TO_PREFIX: Final = "amq.rabbitmq.reply-to."

# NOTE: x-death (depth 4: headers > array > table > array) and every header creditstream sets
# fit far inside these; the frame size (128 KiB) bounds the table's bytes anyway.
MAX_HEADER_DEPTH: Final = 16
MAX_HEADER_FIELDS: Final = 1024
MAX_HEADER_BYTES: Final = 65_536
MESSAGE_ID_MAX_LENGTH: Final = 128
MESSAGE_ID_PATTERN: Final = re.compile(r"[!-~]{1,128}")  # visible ASCII
MESSAGE_ID_FORBIDDEN: Final = frozenset("/#")
USER_ID_PATTERN: Final = re.compile(r"[!-~]{1,64}")

# Fixed sizes of AMQP 0-9-1 field values (RabbitMQ/pika dialect), by type tag.
_FIXED: Final = {
    ord("t"): 1, ord("b"): 1, ord("B"): 1, ord("U"): 2, ord("u"): 2, ord("s"): 2,
    ord("I"): 4, ord("i"): 4, ord("f"): 4, ord("L"): 8, ord("l"): 8, ord("d"): 8,
    ord("T"): 8, ord("D"): 5, ord("V"): 0,
}  # fmt: skip
_LENGTH_PREFIXED: Final = frozenset({ord("S"), ord("x")})


class HeaderTableError(ValueError):
    """A headers table that is out of bounds or not well formed."""


@dataclass(frozen=True, slots=True)
class TableShape:
    """Size of an encoded field table: nesting depth, fields and values, bytes, end offset."""

    depth: int
    fields: int
    size: int
    end: int


def measure_table(encoded: bytes, offset: int, max_depth: int = MAX_HEADER_DEPTH) -> TableShape:
    """Walk an encoded field table without recursion; raise HeaderTableError past max_depth."""
    (size,) = struct.unpack_from(">I", encoded, offset)
    start = offset
    end = offset + 4 + size
    if end > len(encoded):
        raise HeaderTableError("headers table longer than its frame")
    # A stack of (container end, is_table): tables hold key/value pairs, arrays values only.
    stack: list[tuple[int, bool]] = [(end, True)]
    position, fields, deepest = offset + 4, 0, 1
    while stack:
        container_end, is_table = stack[-1]
        if position >= container_end:
            if position > container_end:
                raise HeaderTableError("a nested value runs past its container")
            stack.pop()
            continue
        if is_table:
            position += 1 + encoded[position]  # short-string key
        kind = encoded[position]
        position += 1
        fields += 1
        if kind in _FIXED:
            position += _FIXED[kind]
        elif kind in _LENGTH_PREFIXED:
            (length,) = struct.unpack_from(">I", encoded, position)
            position += 4 + length
        elif kind in (ord("F"), ord("A")):
            (length,) = struct.unpack_from(">I", encoded, position)
            position += 4
            stack.append((position + length, kind == ord("F")))
            deepest = max(deepest, len(stack))
            if deepest > max_depth:
                raise HeaderTableError(f"headers nested deeper than {max_depth} levels")
        else:
            raise HeaderTableError(f"unknown field type {bytes([kind])!r}")
    return TableShape(deepest, fields, end - start, end)


def _skip_short_string(encoded: bytes, offset: int) -> int:
    return offset + 1 + encoded[offset]


class GuardedBasicProperties(pika.spec.BasicProperties):
    """BasicProperties whose decoder refuses a headers table out of bounds instead of recursing.

    A refused table is replaced by `{REFUSED_HEADERS: why}`; everything else decodes as usual.
    """

    def decode(self, encoded: bytes, offset: int = 0) -> GuardedBasicProperties:
        """Decode the properties, measuring the headers table first."""
        flags, position = 0, offset
        for word in range(8):  # property flags: 16-bit words, low bit = another word follows
            (partial,) = struct.unpack_from(">H", encoded, position)
            position += 2
            flags |= partial << (word * 16)
            if not partial & 1:
                break
        if not flags & self.FLAG_HEADERS:
            return super().decode(encoded, offset)
        if flags & self.FLAG_CONTENT_TYPE:
            position = _skip_short_string(encoded, position)
        if flags & self.FLAG_CONTENT_ENCODING:
            position = _skip_short_string(encoded, position)
        try:
            shape = measure_table(encoded, position)
            if shape.fields > MAX_HEADER_FIELDS:
                raise HeaderTableError(f"more than {MAX_HEADER_FIELDS} header fields")
            if shape.size > MAX_HEADER_BYTES:
                raise HeaderTableError(f"headers table larger than {MAX_HEADER_BYTES} bytes")
        except (HeaderTableError, struct.error, IndexError) as exc:
            return self._decode_refusing(encoded, offset, position, str(exc))
        try:
            return super().decode(encoded, offset)
        except Exception as exc:  # noqa: BLE001 - any value pika cannot decode (a timestamp
            # out of range: OverflowError) must not reach pika's I/O loop, which drops the
            # connection on it.
            return self._decode_refusing(
                encoded, offset, position, f"undecodable header value ({type(exc).__name__})"
            )

    def _decode_refusing(
        self, encoded: bytes, offset: int, position: int, why: str
    ) -> GuardedBasicProperties:
        """Decode with the headers table at `position` replaced by the refusal marker."""
        (size,) = struct.unpack_from(">I", encoded, position)
        marker: list[bytes] = []
        pika.data.encode_table(marker, {REFUSED_HEADERS: why[:200]})
        encoded = encoded[:position] + b"".join(marker) + encoded[position + 4 + size :]
        return super().decode(encoded, offset)


def install_header_guard() -> None:
    """Make pika decode every Basic content header with GuardedBasicProperties (idempotent).

    NOTE: pika looks the properties class up in `pika.spec.props` for each content header
    frame; there is no per-connection hook, so this is process-wide (and harmless to other
    connections: a table within the bounds decodes exactly as before).
    """
    pika.spec.props[pika.spec.BasicProperties.INDEX] = GuardedBasicProperties


def check_properties(properties: Any) -> Rejection | None:
    """A message-level rejection for properties out of bounds, or None."""
    for field in (
        "reply_to",
        "correlation_id",
        "content_type",
        "content_encoding",
        "type",
        "app_id",
    ):
        if isinstance(getattr(properties, field, None), bytes):
            # NOTE: pika leaves a short string that is not UTF-8 as bytes; str methods on it
            # (reply_to.startswith) raised TypeError out of the settlement and killed the loop.
            return Rejection(BAD_PROPERTIES, f"{field} is not UTF-8")
    headers = properties.headers or {}
    if REFUSED_HEADERS in headers:
        return Rejection(BAD_PROPERTIES, f"headers refused: {headers[REFUSED_HEADERS]}")
    message_id = properties.message_id
    if message_id is not None and (
        not isinstance(message_id, str)
        or not MESSAGE_ID_PATTERN.fullmatch(message_id)
        or MESSAGE_ID_FORBIDDEN.intersection(message_id)
    ):
        return Rejection(
            BAD_PROPERTIES,
            f"message_id must be 1..{MESSAGE_ID_MAX_LENGTH} visible ASCII characters "
            "without '/' or '#'",
        )
    source = headers.get(RESULT_SOURCE_HEADER, "live")
    if source not in RESULT_SOURCES:
        return Rejection(
            BAD_PROPERTIES, f"{RESULT_SOURCE_HEADER} must be one of {', '.join(RESULT_SOURCES)}"
        )
    user_id = properties.user_id
    if not isinstance(user_id, str) or not USER_ID_PATTERN.fullmatch(user_id):
        return Rejection(
            BAD_PROPERTIES,
            "user_id (the publishing account, checked by RabbitMQ) must be set: 1..64 visible "
            "ASCII characters",
        )
    return None


def reply_allowed(reply_to: str, allowed_prefixes: Sequence[str] = ()) -> bool:
    """True when a reply may go to `reply_to`: direct reply-to, or a configured prefix."""
    if not isinstance(reply_to, str):
        return False
    return reply_to.startswith(DIRECT_REPLY_TO_PREFIX) or any(
        prefix and reply_to.startswith(prefix) for prefix in allowed_prefixes
    )
