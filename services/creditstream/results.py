"""Reading results back: the results stream (every prediction event) and the results store.

`creditstream results follow` reads the stream queue bound to the predictions exchange from an
offset (first, last, next, a number or a time) and prints one JSON line per prediction event;
`creditstream results get ID...` reads the database, which holds every prediction whatever the
stream's retention removed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions

from creditstream.broker import BROKER_DOWN_ERRORS, connect

if TYPE_CHECKING:
    from creditstream.settings import Settings

log = logging.getLogger(__name__)

StreamOffset = str | int | dt.datetime
_NAMED = ("first", "last", "next")
_PREFETCH = 500


class FollowError(RuntimeError):
    """The results stream cannot be read (no broker, no such stream, no permission)."""


def parse_offset(value: str) -> StreamOffset:
    """`first`, `last`, `next`, an offset number or an ISO 8601 time (UTC when no zone given)."""
    text = value.strip()
    if text.lower() in _NAMED:
        return text.lower()
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"not a stream offset: {value!r} (first, last, next, a number, or a time such as "
            "2026-11-30T21:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def events_of(body: bytes) -> list[dict[str, Any]]:
    """The prediction events in one message of the predictions exchange (a JSON list).

    Anything else (anyone allowed to publish there could) is skipped, with a warning.
    """
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        log.warning("skipping a message that is not JSON (%d bytes)", len(body))
        return []
    return [e for e in (decoded if isinstance(decoded, list) else [decoded]) if isinstance(e, dict)]


def follow(
    settings: Settings,
    start: StreamOffset,
    emit: Callable[[dict[str, Any]], None],
    *,
    stop: threading.Event,
    limit: int | None = None,
    idle_exit_s: float | None = None,
) -> int:
    """Emit every event of the results stream from `start` until stopped; returns the count.

    Ends by itself after `limit` events or `idle_exit_s` seconds without one. A lost broker
    connection is reopened from the offset after the last message read (before the first one,
    from the time of the first attach: `next` does not skip what was published meanwhile).
    Raises FollowError when the stream cannot be read at all.
    """
    offset: StreamOffset = start
    emitted = 0
    last_message = _now()
    inbox: list[tuple[Any, Any, bytes]] = []
    while not stop.is_set():
        inbox.clear()
        try:
            connection = connect(settings, name="creditstream-results-follow", stop=stop)
        except BROKER_DOWN_ERRORS as exc:
            raise FollowError(f"broker unreachable: {exc}") from exc
        if offset in ("next", "last"):
            # NOTE: should this connection drop before a message arrives, the next one starts
            # where this one did (by time), not at a new "next" that skips what came meanwhile.
            attached_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        try:
            channel = connection.channel()
            # NOTE: a stream queue refuses consumers without a prefetch (and auto-ack).
            channel.basic_qos(prefetch_count=_PREFETCH)
            channel.basic_consume(
                settings.results_stream,
                on_message_callback=lambda _ch, m, p, b: inbox.append((m, p, b)),
                arguments={"x-stream-offset": offset},
            )
            while not stop.is_set():
                connection.process_data_events(time_limit=0.2)
                for method, props, body in inbox:
                    stream_offset = (props.headers or {}).get("x-stream-offset")
                    if isinstance(stream_offset, int):
                        offset = stream_offset + 1
                    for event in events_of(body):
                        emit(event)
                        emitted += 1
                        if limit is not None and emitted >= limit:
                            return emitted
                    channel.basic_ack(method.delivery_tag)
                    last_message = _now()
                inbox.clear()
                if idle_exit_s is not None and _now() - last_message >= idle_exit_s:
                    return emitted
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise FollowError(
                f"cannot read stream {settings.results_stream}: {exc.reply_text}"
            ) from exc
        except BROKER_DOWN_ERRORS as exc:
            if offset in ("next", "last"):
                offset = attached_at
            log.warning("lost the broker (%s); resuming at offset %s", exc, offset)
        finally:
            try:
                if connection.is_open:
                    connection.close()
            except Exception:
                log.debug("ignoring error while closing", exc_info=True)
    return emitted


def get(settings: Settings, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Stored predictions whose request id or record id is one of `ids` (the database)."""
    from creditstream.store import ResultsStore

    store = ResultsStore.from_settings(settings)
    try:
        return store.get(ids)
    finally:
        store.dispose()


def _now() -> float:
    import time

    return time.monotonic()
