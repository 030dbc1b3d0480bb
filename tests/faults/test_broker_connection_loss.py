"""Broker connections force-closed mid-run, twice: everyone reconnects, nothing lost or doubled.

`rabbitmqctl close_all_connections` would also cut every other test on this machine, so the
test closes exactly what `close_all_connections` would close *of this deployment*: every
connection whose client-provided name ends with the test's own queue (producer and consumers).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from creditstream.settings import Settings
from tests.faults.conftest import Workload, verdict
from tests.faults.fleet import Fleet
from tests.faults.injectors import close_connections_of, connections_of, wait_for
from tests.faults.ledger import record_run
from tests.helpers import Processes, count_rows, wait_until

pytestmark = pytest.mark.faults

_SUMMARY = re.compile(r"produced (\d+) records.*?(?:; (\d+) reconnects, (\d+) republished)?$", re.M)


@dataclass(frozen=True)
class LossRun:
    """A paced workload (so the producer is mid-stream when its connection dies)."""

    workload: Workload
    rate: int
    closes_at: tuple[float, ...] = (0.25, 0.55)


CASES = [
    pytest.param(LossRun(Workload(5_000, real_data=False), rate=300), id="short-5k"),
    pytest.param(
        LossRun(Workload(30_000, real_data=True), rate=2_000), marks=pytest.mark.slow, id="30k"
    ),
]


def _components(connections: Mapping[Any, str]) -> dict[str, int]:
    """{component: connections} from client-provided names `creditstream-<component>:<queue>`."""
    return dict(Counter(name.split(":")[0] for name in connections.values()))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("run", CASES)
def test_connections_closed_twice_everyone_reconnects_and_results_are_exactly_once(
    run: LossRun,
    pg_settings: Callable[..., Settings],
    processes: Processes,
    request: pytest.FixtureRequest,
) -> None:
    settings = pg_settings(reconnect_max_s=2.0)
    queue = settings.requests_queue
    n = run.workload.records
    fleet = Fleet(processes, settings)
    fleet.start()
    fleet.start()
    started = time.monotonic()
    producer = processes.start(
        ["produce", *run.workload.produce_args(), "--rate", str(run.rate), "--no-progress"],
        settings,
        "producer",
    )
    # NOTE: each consumer also has its outbox relay's publishing connection.
    everyone = {"creditstream-producer": 1, "creditstream-consumer": 2, "creditstream-relay": 2}
    closed_rounds: list[list[str]] = []
    for fraction in run.closes_at:
        # Cut points in time (the producer is paced): mid-stream for producer and consumers.
        # NOTE: the management API lists a new connection up to its statistics interval (5 s)
        # late, so the second cut leaves the paced producer that much time to spare.
        cut_at = started + fraction * n / run.rate
        time.sleep(max(0.0, cut_at - time.monotonic()))
        assert wait_for(
            lambda: _components(connections_of(queue)) == everyone, timeout=30, interval=0.2
        ), f"producer and both consumers connected before the cut: {connections_of(queue)}"
        assert producer.poll() is None, "producer still mid-stream when its connection is cut"
        closed_rounds.append(sorted(close_connections_of(queue)))
    assert producer.wait(timeout=300) == 0, Path(producer.log_path).read_text()[-3000:]  # type: ignore[attr-defined]
    wait_until(lambda: count_rows(settings) >= n, timeout=300, interval=0.5, message="all rows")
    time.sleep(1.0)
    exit_codes = fleet.stop()
    elapsed = time.monotonic() - started

    producer_log = Path(producer.log_path).read_text()  # type: ignore[attr-defined]
    match = _SUMMARY.search(producer_log)
    assert match, producer_log[-2000:]
    confirmed = int(match.group(1))
    producer_reconnects = int(match.group(2) or 0)
    republished = int(match.group(3) or 0)
    consumer_reconnects = [m.last["creditstream_broker_reconnects_total"] for m in fleet.members]
    result = verdict(settings, run.workload)
    record_run(
        "broker-connection-loss",
        request.node.callspec.id,
        records=n,
        connection_cuts=len(closed_rounds),
        connections_closed=sum(len(r) for r in closed_rounds),
        producer_reconnects=producer_reconnects,
        producer_republished=republished,
        consumer_reconnects=consumer_reconnects,
        redelivered_messages_seen=fleet.total("creditstream_redelivered_messages_total"),
        duplicate_records_skipped=fleet.total("creditstream_duplicate_records_total"),
        stored=result.stored,
        lost=result.lost,
        duplicated=result.duplicated,
        seconds=round(elapsed, 1),
    )
    for closed in closed_rounds:
        assert _components(dict(enumerate(closed))) == everyone, "all five were cut"
    assert confirmed == n
    assert producer_reconnects >= len(run.closes_at), "the producer reconnected after each cut"
    assert all(r >= len(run.closes_at) for r in consumer_reconnects), consumer_reconnects
    assert exit_codes == [0, 0]
    assert result == type(result)(stored=n, lost=0, duplicated=0, unexpected=0)
