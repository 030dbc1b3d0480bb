"""SIGKILLed consumers: each record gets exactly one prediction; redeliveries are recognised."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from creditstream.settings import Settings
from tests.faults.conftest import Workload, verdict
from tests.faults.fleet import Fleet
from tests.faults.ledger import record_run
from tests.helpers import Processes, count_rows, wait_until

pytestmark = pytest.mark.faults


@dataclass(frozen=True)
class KillRun:
    """A workload, how many SIGKILLs, and how many consumers run side by side."""

    workload: Workload
    kills: int
    consumers: int = 2
    seed: int = 20261128


CASES = [
    pytest.param(KillRun(Workload(5_000, real_data=False), kills=2), id="short-5k-2-kills"),
    pytest.param(
        KillRun(Workload(30_000, real_data=True), kills=5),
        marks=pytest.mark.slow,
        id="30k-5-kills",
    ),
]


def _rows_at_least(settings: Settings, rows: int) -> bool:
    return count_rows(settings) >= rows


@pytest.mark.timeout(900)
@pytest.mark.parametrize("run", CASES)
def test_sigkilled_consumers_lose_nothing_and_store_nothing_twice(
    run: KillRun,
    pg_settings: Callable[..., Settings],
    processes: Processes,
    request: pytest.FixtureRequest,
) -> None:
    settings = pg_settings()
    n = run.workload.records
    rng = random.Random(run.seed)
    # Kill points: random, but mid-run (between 5 % and 90 % of the records stored).
    kill_at = sorted(int(n * rng.uniform(0.05, 0.9)) for _ in range(run.kills))
    fleet = Fleet(processes, settings)
    for _ in range(run.consumers):
        fleet.start()
    started = time.monotonic()
    producer = processes.start(
        ["produce", *run.workload.produce_args(), "--no-progress"], settings, "producer"
    )
    for threshold in kill_at:
        wait_until(
            functools.partial(_rows_at_least, settings, threshold),
            timeout=300,
            interval=0.05,
            message=f"{threshold} rows before the next kill",
        )
        # The victim: a random consumer that is up (it holds unacked deliveries right now).
        victim = rng.choice([m for m in fleet.live() if fleet.scrape(m)])
        fleet.kill(victim)
        fleet.start()  # what the Deployment (or the supervisor) does: a fresh pod
    assert producer.wait(timeout=300) == 0, "producer confirmed every record"
    wait_until(lambda: count_rows(settings) >= n, timeout=300, interval=0.5, message="all rows")
    time.sleep(1.0)  # a duplicate, if any, would land now
    exit_codes = fleet.stop()
    elapsed = time.monotonic() - started

    result = verdict(settings, run.workload)
    redelivered = fleet.total("creditstream_redelivered_messages_total")
    duplicates_skipped = fleet.total("creditstream_duplicate_records_total")
    record_run(
        "consumer-sigkill",
        request.node.callspec.id,
        records=n,
        consumers=run.consumers,
        kills=fleet.kills,
        kill_points_rows=kill_at,
        stored=result.stored,
        lost=result.lost,
        duplicated=result.duplicated,
        redelivered_messages_seen=redelivered,
        duplicate_records_skipped=duplicates_skipped,
        seconds=round(elapsed, 1),
    )
    assert fleet.kills == run.kills
    assert exit_codes == [0] * len(exit_codes), "survivors drain and exit 0 on SIGTERM"
    assert result == type(result)(stored=n, lost=0, duplicated=0, unexpected=0)
    # A SIGKILLed consumer held unacked deliveries: the broker redelivered them, flagged, and
    # the consumers counted them (whatever had been stored already was skipped, not re-added).
    assert redelivered > 0, "redeliveries recognised"
