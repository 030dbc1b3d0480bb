"""SIGTERM ends a consumer or producer that is still waiting for the broker at start-up, and
stops a running producer after its outstanding confirms.

Kubernetes gives the pod `terminationGracePeriodSeconds` (45 s in the chart) after SIGTERM;
the first connect waits up to `broker_wait_s` (120 s) for a broker that is not there yet.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from creditstream.settings import Settings
from tests.helpers import Processes, exit_code_within, free_port, ready_in_queue, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# (command, exit code after SIGTERM, what it must say)
CASES = [
    pytest.param(["consume"], 0, "consumer stopped", id="consumer"),
    pytest.param(
        ["produce", "--synthetic", "--limit", "10", "--no-progress"],
        1,
        "STOPPED (SIGTERM while waiting for the broker)",
        id="producer",
    ),
]


@pytest.mark.parametrize(("command", "code", "says"), CASES)
def test_sigterm_interrupts_the_first_connect(
    make_settings: Callable[..., Settings],
    processes: Processes,
    command: list[str],
    code: int,
    says: str,
) -> None:
    # NOTE: a closed port: the broker "is not up yet"; every attempt is refused at once.
    settings = make_settings(
        amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/", broker_wait_s=120
    )
    process = processes.start(command, settings, command[0])
    log = Path(process.log_path)  # type: ignore[attr-defined]
    wait_until(
        lambda: "Retrying" in log.read_text() or process.poll() is not None,
        timeout=60,
        message="a first failed connection attempt",
    )
    assert process.poll() is None, log.read_text()[-2000:]
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    returncode = exit_code_within(process, 20)
    took = time.monotonic() - sent
    output = log.read_text()
    assert returncode is not None, f"still connecting 20 s after SIGTERM: {output[-1500:]}"
    assert returncode == code, output[-2000:]
    assert says in output, output[-2000:]
    assert took < 20


def test_sigterm_mid_run_stops_an_endless_producer_with_what_it_sent_confirmed(
    make_settings: Callable[..., Settings], processes: Processes
) -> None:
    settings = make_settings()
    process = processes.start(
        ["produce", "--synthetic", "--rate", "300", "--no-progress"], settings, "producer"
    )
    log = Path(process.log_path)  # type: ignore[attr-defined]
    wait_until(lambda: ready_in_queue(settings) >= 100, timeout=60, message="publishing")
    process.send_signal(signal.SIGTERM)
    returncode = exit_code_within(process, 20)
    output = log.read_text()
    assert returncode == 1, output[-2000:]
    match = re.search(r"produced (\d+) records .*STOPPED \(SIGTERM\)", output)
    assert match, output[-2000:]
    # Everything it published was confirmed before it left: the queue holds exactly that.
    assert ready_in_queue(settings) == int(match.group(1))
    assert "NOT CONFIRMED" not in output
