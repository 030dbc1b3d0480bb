"""Request/reply latency through `PredictionClient` at a fixed offered rate (open loop)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from creditstream.bench.stats import LatencySummary, open_loop_schedule, summarize_latencies

if TYPE_CHECKING:
    from concurrent.futures import Future

    from creditstream.client import PredictionClient


@dataclass(frozen=True)
class LatencyResult:
    """What one offered rate achieved."""

    offered_per_s: float
    sent: int
    replied: int
    errors: int
    achieved_per_s: float
    max_send_lag_ms: float
    summary: LatencySummary

    def as_dict(self) -> dict[str, Any]:
        """JSON shape."""
        return {
            "offered_per_s": self.offered_per_s,
            "sent": self.sent,
            "replied": self.replied,
            "errors": self.errors,
            "achieved_per_s": self.achieved_per_s,
            "max_send_lag_ms": self.max_send_lag_ms,
            **self.summary.as_dict(),
        }


def measure_latency(
    client: PredictionClient,
    records: list[dict[str, Any]],
    rate_per_s: float,
    duration_s: float,
    *,
    reply_timeout_s: float = 30.0,
) -> LatencyResult:
    """Send one record per message on a schedule fixed in advance; latency = reply − scheduled.

    The reply time is taken in the client's I/O thread the moment the reply is handed over
    (a Future done-callback), so waiting here adds nothing to the figures.
    """
    schedule = open_loop_schedule(time.perf_counter() + 0.05, rate_per_s, duration_s)
    n = len(schedule)
    replied_at = np.full(n, np.nan)
    errors = 0
    futures: list[Future[Any]] = []
    source = itertools.cycle(records)
    max_lag = 0.0

    def on_done(index: int) -> Any:
        def callback(future: Future[Any]) -> None:
            if future.exception() is None:
                replied_at[index] = time.perf_counter()

        return callback

    for index, due in enumerate(schedule):
        wait = due - time.perf_counter()
        if wait > 0.0005:
            time.sleep(wait)
        max_lag = max(max_lag, time.perf_counter() - due)
        future = client.submit(next(source))
        future.add_done_callback(on_done(index))
        futures.append(future)
    deadline = time.perf_counter() + reply_timeout_s
    for future in futures:
        try:
            reply = future.result(timeout=max(0.0, deadline - time.perf_counter()))
        except Exception:  # noqa: BLE001 - a lost or failed request counts as an error
            errors += 1
            continue
        if not isinstance(reply, dict) or "probability" not in reply:
            errors += 1
    ok = ~np.isnan(replied_at)
    latencies = replied_at[ok] - schedule[ok]
    span = float(np.nanmax(replied_at) - schedule[0]) if ok.any() else 0.0
    return LatencyResult(
        offered_per_s=rate_per_s,
        sent=n,
        replied=int(ok.sum()),
        errors=errors,
        achieved_per_s=int(ok.sum()) / span if span > 0 else float("nan"),
        max_send_lag_ms=max_lag * 1000,
        summary=summarize_latencies(latencies),
    )
