"""The ceiling: a no-op consumer (decode JSON + multi-ack; no model, no store).

It reads the same quorum queue with the same prefetch and the same loop shape as creditstream's
consumer (deliveries collected by a callback, acked with multiple=True once per batch or when
nothing more is waiting), so the gap between the two is the cost of validation, scoring and the
durable write. Run as its own process: `python -m creditstream.bench.ceiling --expect N`; the
settings come from CREDITSTREAM_* variables; one JSON line with the timing goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from typing import Any

from creditstream.broker import connect
from creditstream.settings import Settings


def drain_noop(settings: Settings, expect: int, max_seconds: float) -> dict[str, Any]:
    """Consume `expect` messages (or until `max_seconds` after the first) and time it."""
    connection = connect(settings, name="creditstream-bench-ceiling", wait_s=10)
    channel = connection.channel()
    channel.basic_qos(prefetch_count=settings.prefetch)
    inbox: deque[tuple[Any, bytes]] = deque()
    channel.basic_consume(
        settings.requests_queue,
        on_message_callback=lambda _ch, method, _props, body: inbox.append((method, body)),
    )
    received, decoded_records = 0, 0
    first: float | None = None
    last_ack = 0.0
    pending_tag: int | None = None
    pending = 0
    idle_since = time.monotonic()
    try:
        while received < expect:
            connection.process_data_events(time_limit=0 if inbox else 0.05)
            if not inbox:
                if pending_tag is not None:
                    channel.basic_ack(pending_tag, multiple=True)
                    last_ack, pending_tag, pending = time.time(), None, 0
                if time.monotonic() - idle_since > 10:
                    break
                continue
            idle_since = time.monotonic()
            if first is None:
                first = time.time()
            while inbox:
                method, body = inbox.popleft()
                payload = json.loads(body)
                decoded_records += len(payload) if isinstance(payload, list) else 1
                received += 1
                pending_tag, pending = method.delivery_tag, pending + 1
                if pending >= settings.batch_size:
                    channel.basic_ack(pending_tag, multiple=True)
                    last_ack, pending_tag, pending = time.time(), None, 0
            if first is not None and time.time() - first > max_seconds:
                break
        if pending_tag is not None:
            channel.basic_ack(pending_tag, multiple=True)
            last_ack = time.time()
    finally:
        connection.close()
    return {
        "messages": received,
        "records": decoded_records,
        "first_receive": first,
        "last_ack": last_ack,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ceiling process."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args(argv)
    result = drain_noop(Settings(), args.expect, args.max_seconds)
    print(json.dumps(result), flush=True)
    return 0 if result["messages"] == args.expect else 1


if __name__ == "__main__":
    sys.exit(main())
