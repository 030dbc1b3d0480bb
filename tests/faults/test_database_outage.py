"""PostgreSQL unavailable for ~10 s mid-run: consumers hold their batches (no ack), back off,
leave the rest in the queue, and resume; nothing is lost or stored twice.

The shared PostgreSQL is never restarted: the test gets a database of its own and makes *that*
unavailable (`ALLOW_CONNECTIONS false` + `pg_terminate_backend` of its sessions), restoring it
in `finally`.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pika
import pytest

from creditstream.settings import Settings
from tests.faults.conftest import Workload, verdict
from tests.faults.fleet import Fleet, Member
from tests.faults.injectors import database_outage, dedicated_database
from tests.faults.ledger import record_run
from tests.helpers import AMQP_URL, Processes, count_rows, wait_until

pytestmark = pytest.mark.faults

SCORED = 'creditstream_records_total{outcome="scored"}'
STORE_ERRORS = "creditstream_store_errors_total"
PREFETCH = 100


@dataclass(frozen=True)
class OutageRun:
    """A paced workload and an outage window that opens once a fraction of it is stored."""

    workload: Workload
    rate: int
    outage_after: float = 0.1
    outage_s: float = 10.0


CASES = [
    pytest.param(OutageRun(Workload(4_000, real_data=False), rate=200), id="short-4k-10s"),
    pytest.param(
        OutageRun(Workload(30_000, real_data=True), rate=1_500),
        marks=pytest.mark.slow,
        id="30k-10s",
    ),
]


@pytest.fixture
def database_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own."""
    with dedicated_database() as url:
        yield url


def _status(member: Member, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{member.port}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _ready_messages(settings: Settings) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        frame = connection.channel().queue_declare(settings.requests_queue, passive=True)
        return int(frame.method.message_count)
    finally:
        connection.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("run", CASES)
def test_database_outage_holds_batches_backs_off_and_resumes_losing_nothing(
    run: OutageRun,
    make_settings: Callable[..., Settings],
    database_url: str,
    processes: Processes,
    request: pytest.FixtureRequest,
) -> None:
    settings = make_settings(database_url=database_url, reconnect_max_s=4.0)
    n = run.workload.records
    # NOTE: a small prefetch, so that most of what arrives during the outage waits *ready* in
    # the queue (visible to KEDA) rather than unacked in the consumers' hands.
    fleet = Fleet(processes, settings, args=("--prefetch", str(PREFETCH)))
    members = [fleet.start(), fleet.start()]
    started = time.monotonic()
    producer = processes.start(
        ["produce", *run.workload.produce_args(), "--rate", str(run.rate), "--no-progress"],
        settings,
        "producer",
    )
    wait_until(
        lambda: count_rows(settings) >= int(n * run.outage_after),
        timeout=120,
        interval=0.1,
        message="scoring under way before the outage",
    )
    with database_outage(database_url) as sessions_cut:
        outage_started = time.monotonic()
        time.sleep(2.0)  # batches in flight when the database went away fail and are held now
        fleet.scrape_all()
        scored_before = [m.last[SCORED] for m in members]
        errors_before = [m.last[STORE_ERRORS] for m in members]
        time.sleep(max(0.0, outage_started + run.outage_s - time.monotonic()))
        fleet.scrape_all()
        scored_during = [m.last[SCORED] - b for m, b in zip(members, scored_before, strict=True)]
        store_errors = [m.last[STORE_ERRORS] for m in members]
        waiting = _ready_messages(settings)
        live = [_status(m, "/healthz") for m in members]
        ready = [_status(m, "/readyz") for m in members]
        outage_s = time.monotonic() - outage_started
    assert producer.wait(timeout=300) == 0
    wait_until(lambda: count_rows(settings) >= n, timeout=300, interval=0.5, message="all rows")
    time.sleep(1.0)
    ready_after = [_status(m, "/readyz") for m in members]
    exit_codes = fleet.stop()
    result = verdict(settings, run.workload)
    record_run(
        "database-outage",
        request.node.callspec.id,
        records=n,
        outage_seconds=round(outage_s, 1),
        sessions_terminated=sessions_cut,
        store_errors_per_consumer=store_errors,
        acked_during_outage=scored_during,
        ready_messages_at_outage_end=waiting,
        redelivered_messages_seen=fleet.total("creditstream_redelivered_messages_total"),
        duplicate_records_skipped=fleet.total("creditstream_duplicate_records_total"),
        stored=result.stored,
        lost=result.lost,
        duplicated=result.duplicated,
        seconds=round(time.monotonic() - started, 1),
    )
    assert exit_codes == [0, 0], "no consumer crashed; both drained and exited 0"
    assert scored_during == [0, 0], "nothing acked while the results could not be stored"
    assert all(e > b for e, b in zip(store_errors, errors_before, strict=True)), (
        f"every consumer kept retrying: {errors_before} -> {store_errors}"
    )
    # Exponential backoff (0.2 s doubling, capped at 4 s): a handful of attempts in 10 s, not
    # a hot loop of hundreds.
    assert max(store_errors) <= 15, f"backoff, not a hot loop: {store_errors}"
    # ~rate × 8 s were published after the first 2 s of the outage; at most 2 × prefetch of
    # them can be in the consumers' hands.
    assert waiting > 0, "the producer's records waited in the queue"
    assert live == [200, 200], "alive (not restarted by a liveness probe) while waiting"
    assert ready == [503, 503], "not ready while the store is down"
    assert ready_after == [200, 200], "ready again once the store is back"
    assert result == type(result)(stored=n, lost=0, duplicated=0, unexpected=0)
