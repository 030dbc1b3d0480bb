"""The producer always ends: giving up on a broker that is gone, with an endless source too.

`produce --synthetic` without `--limit` is an endless source. When the broker went away for
good the producer gave up reconnecting and then tried to count what it had not sent, by
reading the endless source to its end: it never exited (and grew without bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from creditstream.settings import Settings
from tests.faults.injectors import dedicated_vhost
from tests.helpers import Processes, exit_code_within, ready_in_queue, wait_until

pytestmark = pytest.mark.faults


@pytest.mark.timeout(300)
def test_endless_producer_exits_after_giving_up_on_a_broker_gone_for_good(
    make_settings: Callable[..., Settings], processes: Processes
) -> None:
    with dedicated_vhost() as (url, delete_vhost):
        settings = make_settings(amqp_url=url, broker_wait_s=3, reconnect_max_s=0.5)
        producer = processes.start(
            ["produce", "--synthetic", "--rate", "300", "--no-progress"], settings, "producer"
        )
        log = Path(producer.log_path)  # type: ignore[attr-defined]
        wait_until(lambda: ready_in_queue(settings) >= 100, timeout=120, message="publishing")
        delete_vhost()
        gone_at = time.monotonic()
        code = exit_code_within(producer, 90)
        exited_after_s = time.monotonic() - gone_at
    output = log.read_text()
    assert code is not None, f"still running 90 s after the broker went away: {output[-1500:]}"
    assert code == 1, output[-2000:]
    assert "giving up" in output
    assert "before the end of the source" in output, output[-1500:]
    # broker_wait_s (3 s) of reconnect attempts, then out: generous for a loaded machine
    assert exited_after_s < 60
