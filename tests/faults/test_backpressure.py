"""Backpressure: the producer honours broker flow control (connection.blocked) and confirms
everything; producer and consumer memory stay bounded while a large backlog builds and drains.

Flow control is the broker's real memory alarm, raised for ~3 s and always lowered again
(it pauses every publisher on this broker for that long, so the window is kept short).
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pika
import pika.exceptions
import pytest
import yaml

from creditstream.settings import REPO_ROOT, Settings
from tests.faults.conftest import Workload, verdict
from tests.faults.fleet import Fleet
from tests.faults.injectors import (
    RssSampler,
    close_connections_of,
    connections_of,
    current_watermark,
    memory_alarm,
    wait_for,
)
from tests.faults.ledger import record_run
from tests.helpers import AMQP_URL, Processes, count_rows, exit_code_within, wait_until

pytestmark = pytest.mark.faults

MIB = 1024 * 1024
_UNITS = {"Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB}


def chart_memory_limit() -> int:
    """The containers' memory limit in the chart's values.yaml (the budget they must fit)."""
    values = yaml.safe_load((REPO_ROOT / "charts" / "creditstream" / "values.yaml").read_text())
    limit = str(values["resources"]["limits"]["memory"])
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", limit)
    assert match, f"unexpected memory limit {limit!r}"
    return int(match.group(1)) * _UNITS[match.group(2)]


def ready_messages(settings: Settings) -> int:
    """Ready messages in the requests queue (passive declare; 0 before it is declared)."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        frame = connection.channel().queue_declare(settings.requests_queue, passive=True)
        return int(frame.method.message_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        connection.close()


# NOTE: the short run is paced so the producer is still publishing when the alarm (a
# rabbitmqctl call: seconds on a busy machine) goes up; the long one is slow enough unpaced.
CASES = [
    pytest.param(Workload(20_000, real_data=False), ["--rate", "1500"], id="short-20k-backlog"),
    pytest.param(Workload(200_000, real_data=False), [], marks=pytest.mark.slow, id="200k-backlog"),
]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize(("workload", "pace"), CASES)
def test_flow_control_is_honoured_and_memory_stays_bounded_with_a_backlog(
    workload: Workload,
    pace: list[str],
    pg_settings: Callable[..., Settings],
    processes: Processes,
    request: pytest.FixtureRequest,
) -> None:
    settings = pg_settings()
    n = workload.records
    budget = chart_memory_limit()
    watermark = current_watermark()  # read before: each rabbitmqctl call costs seconds
    started = time.monotonic()
    with RssSampler({}) as rss:
        producer = processes.start(
            ["produce", *workload.produce_args(), *pace, "--no-progress"], settings, "producer"
        )
        rss.add("producer", producer.pid)
        wait_until(
            lambda: (
                ready_messages(settings) >= n // 100
                if producer.poll() is None
                else pytest.fail("producer finished before the flow-control window")
            ),
            timeout=120,
            interval=0.05,
            message="the first 1 % of the backlog published",
        )
        with memory_alarm(watermark):
            log = Path(producer.log_path)  # type: ignore[attr-defined]
            blocked = wait_for(lambda: "connection.blocked" in log.read_text(), timeout=10)
            time.sleep(0.5)  # publishes already on the wire land
            depth_blocked = ready_messages(settings)
            time.sleep(2.5)
            depth_still = ready_messages(settings)
            producer_waiting = producer.poll() is None
        assert producer.wait(timeout=600) == 0, log.read_text()[-2000:]
        backlog = ready_messages(settings)

        fleet = Fleet(processes, settings)
        for index in range(2):
            member = fleet.start()
            rss.add(f"consumer-{index}", member.process.pid)
        wait_until(lambda: count_rows(settings) >= n, timeout=900, interval=1, message="drained")
        time.sleep(1.0)
        exit_codes = fleet.stop()
    result = verdict(settings, workload)
    peaks_mib = {label: round(peak / MIB, 1) for label, peak in rss.peaks.items()}
    producer_log = log.read_text()
    record_run(
        "backpressure",
        request.node.callspec.id,
        records=n,
        backlog_messages=backlog,
        blocked_notice=blocked,
        queue_depth_while_blocked=[depth_blocked, depth_still],
        peak_rss_mib=peaks_mib,
        memory_budget_mib=round(budget / MIB),
        stored=result.stored,
        lost=result.lost,
        duplicated=result.duplicated,
        seconds=round(time.monotonic() - started, 1),
    )
    assert blocked, "the producer was told connection.blocked and said so"
    assert producer_waiting, "the producer waited out the alarm instead of failing"
    assert depth_still == depth_blocked, "nothing was published while blocked"
    assert "lifted flow control" in producer_log
    assert f"produced {n} records" in producer_log and "NOT CONFIRMED" not in producer_log
    assert backlog == n, "the whole run sat in the queue as a backlog"
    assert exit_codes == [0, 0]
    assert result == type(result)(stored=n, lost=0, duplicated=0, unexpected=0)
    for label, peak in rss.peaks.items():
        assert peak < budget, f"{label} peaked at {peak / MIB:.0f} MiB > {budget / MIB:.0f} MiB"


@pytest.mark.timeout(400)
def test_producer_resumes_after_its_connection_is_cut_while_blocked(
    make_settings: Callable[..., Settings], processes: Processes
) -> None:
    """Blocked by a real memory alarm, the producer's connection is force-closed: the producer
    must not carry "blocked" over to its new connection (the broker never unblocks a
    connection it never blocked), so it publishes again once the alarm is gone."""
    settings = make_settings(reconnect_max_s=1.0)
    watermark = current_watermark()
    # NOTE: an endless, paced source: still publishing however slow the fault tooling is.
    producer = processes.start(
        ["produce", "--synthetic", "--rate", "500", "--no-progress"], settings, "producer"
    )
    log = Path(producer.log_path)  # type: ignore[attr-defined]
    wait_until(
        lambda: ready_messages(settings) >= 200, timeout=120, interval=0.05, message="publishing"
    )
    # NOTE: the management API lists a new connection up to its statistics interval late.
    wait_until(
        lambda: (
            "creditstream-producer"
            in [name.split(":")[0] for name in connections_of(settings.requests_queue).values()]
        ),
        timeout=60,
        interval=0.5,
        message="the producer's connection listed by the broker",
    )
    with memory_alarm(watermark):
        blocked = wait_for(lambda: "connection.blocked" in log.read_text(), timeout=30)
        closed = close_connections_of(settings.requests_queue, "cut while blocked")
        cut = wait_for(lambda: "broker connection closed" in log.read_text(), timeout=60)
    at_cut = ready_messages(settings)
    resumed = wait_for(lambda: ready_messages(settings) >= at_cut + 1000, timeout=120, interval=1)
    producer.send_signal(signal.SIGTERM)
    code = exit_code_within(producer, 60)
    output = log.read_text()
    assert blocked and closed and cut, (closed, output[-2000:])
    assert resumed, f"nothing published in 120 s after the alarm cleared: {output[-2000:]}"
    assert code == 1 and "STOPPED (SIGTERM)" in output, output[-2000:]
    assert "NOT CONFIRMED" not in output
