"""PredictionClient against the real broker and a real consumer: callers that give up (cancel,
time out) neither break the client for everyone else nor leave anything behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from creditstream.client import SMOKE_RECORD, PredictionClient, PredictionError
from creditstream.settings import Settings
from tests.helpers import Processes, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def record(record_id: str) -> dict[str, Any]:
    return {**SMOKE_RECORD, "ID": record_id}


def test_a_cancelled_call_does_not_break_later_calls(
    make_settings: Callable[..., Settings], processes: Processes
) -> None:
    settings = make_settings()
    with PredictionClient(settings) as client:
        # NOTE: no consumer yet, so the request waits in the queue and the call is still
        # pending when its caller cancels it; its reply arrives later, for nobody.
        cancelled = client.submit(record("cancelled"))
        assert cancelled.cancel()
        processes.start(["consume"], settings, "consumer")
        try:
            reply = client.predict(record("after"), timeout=60)
        except PredictionError as exc:
            pytest.fail(f"a later call failed after another caller cancelled: {exc}")
        assert client.in_flight == 0
    assert reply["record_id"] == "after"


def test_timed_out_calls_leave_nothing_behind(
    make_settings: Callable[..., Settings], processes: Processes
) -> None:
    settings = make_settings()
    with PredictionClient(settings) as client:
        for index in range(20):
            with pytest.raises(PredictionError, match="no reply within"):
                client.predict(record(f"late-{index}"), timeout=0.05)
        with pytest.raises(PredictionError, match="no reply within"):
            client.predict_many([record(f"many-{i}") for i in range(30)], timeout=0.2)
        assert client.in_flight == 0, "timed-out calls are forgotten"
        # Their replies come once a consumer runs: dropped, and the client still works.
        processes.start(["consume"], settings, "consumer")
        reply = client.predict(record("fresh"), timeout=60)
        assert reply["record_id"] == "fresh"
        wait_until(lambda: client.in_flight == 0, timeout=10, message="nothing pending")
