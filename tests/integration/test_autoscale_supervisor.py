"""LocalKeda (depth -> KEDA + HPA rule -> supervisor) against the real broker and consumers."""

from __future__ import annotations

import math
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from creditstream.autoscale.queue_depth import PassiveDeclareReader, depth_reader_for
from creditstream.autoscale.rule import DEFAULT_SCALE_DOWN, AutoscalingConfig, KedaHpaAutoscaler
from creditstream.harness import isolated_run
from creditstream.harness.keda import QUEUE_LENGTH, LocalKeda, QueueTrigger
from creditstream.harness.results import ResultsReader
from creditstream.harness.supervisor import Supervisor
from creditstream.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """An isolated run: exchanges/queues of its own, a SQLite store of the test's own."""
    import pika
    import pika.exceptions

    base = Settings(log_format="json")
    if not base.model_path.is_file() or not base.resolved_model_card_path.is_file():
        pytest.skip(f"no committed model at {base.model_path} (run `make train`)")
    try:
        pika.BlockingConnection(pika.URLParameters(base.amqp_url.get_secret_value())).close()
    except pika.exceptions.AMQPError as exc:
        pytest.skip(f"RabbitMQ not reachable: {exc!r}")
    prefix = f"creditstream.test.autoscale.{uuid.uuid4().hex[:10]}"
    with isolated_run(base, prefix, sqlite_file=tmp_path / "predictions.sqlite") as ours:
        yield ours


def publish_backlog(settings: Settings, records: int, run_id: str) -> None:
    from creditstream.producer import run_producer

    report = run_producer(
        settings.model_copy(update={"run_id": run_id}),
        synthetic=True,
        limit=records,
        progress=False,
    )
    assert report.unconfirmed == 0


def test_backlog_scales_to_expected_replicas_drains_and_returns_to_zero(
    settings: Settings, tmp_path: Path
) -> None:
    backlog = 3000
    config = AutoscalingConfig(
        queue_name=settings.requests_queue,
        value=500,
        max_replica_count=4,
        polling_interval_s=1,
        cooldown_period_s=3,
        hpa_sync_period_s=1,
        scale_down=replace(DEFAULT_SCALE_DOWN, stabilization_window_s=2),
    )
    expected_peak = min(config.max_replica_count, math.ceil(backlog / config.value))
    publish_backlog(settings, backlog, f"scale-{uuid.uuid4().hex[:6]}")
    trigger = QueueTrigger(depth_reader_for(settings, settings.requests_queue))
    results = ResultsReader(settings)
    history: list[tuple[float, float | None, int, int]] = []
    t0 = time.monotonic()
    with Supervisor(settings, tmp_path / "consumers", stop_timeout_s=30) as supervisor:
        keda = LocalKeda(KedaHpaAutoscaler(config, created_at=0), supervisor, trigger)
        while True:
            tick = keda.tick(time.monotonic() - t0)
            history.append((tick.at, tick.metrics[QUEUE_LENGTH], tick.desired, supervisor.running))
            if (
                results.count() >= backlog
                and tick.desired == 0
                and supervisor.running == 0
                and supervisor.draining == 0
            ):
                break
            assert tick.at < 180, f"did not settle: last samples {history[-5:]}"
            time.sleep(0.25)
        exit_codes = list(supervisor.exit_codes)
        restarts = supervisor.restarts
    keda.close()

    peak = max(running for _, _, _, running in history)
    assert peak == expected_peak, history
    assert history[-1][3] == 0
    counts = results.summary()
    assert counts.rows == counts.distinct_requests == backlog  # none lost, none twice
    assert exit_codes and set(exit_codes) == {0}  # every consumer drained on SIGTERM
    assert restarts == 0
    leftover = PassiveDeclareReader(settings, settings.requests_queue)
    assert leftover.read().ready == 0
    leftover.close()


def all_ready(supervisor: Supervisor) -> bool:
    """Every process answers /readyz 200 (its SIGTERM handler is installed by then)."""
    return all(process.ready() for process in supervisor.processes)


def test_scale_down_mid_backlog_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    backlog = 6000
    publish_backlog(settings, backlog, f"down-{uuid.uuid4().hex[:6]}")
    results = ResultsReader(settings)
    with Supervisor(settings, tmp_path / "consumers", stop_timeout_s=30) as supervisor:
        supervisor.scale_to(3)
        deadline = time.monotonic() + 60
        # NOTE: a process that gets SIGTERM while still importing dies by the signal (-15)
        # before its handler exists; the scale-down under test is of consumers at work.
        while results.count() < 300 or not all_ready(supervisor):
            assert time.monotonic() < deadline, "consumers not ready or scored nothing"
            supervisor.reconcile()
            time.sleep(0.05)
        scored_at_scale_down = results.count()
        supervisor.scale_to(1)  # two consumers get SIGTERM with deliveries in hand
        while results.count() < backlog:
            assert time.monotonic() < deadline + 60, f"stuck at {results.count()}"
            supervisor.reconcile()
            time.sleep(0.1)
        supervisor.scale_to(0)
        while supervisor.draining:
            supervisor.reconcile()
            time.sleep(0.1)
        exit_codes = list(supervisor.exit_codes)
    assert scored_at_scale_down < backlog, "backlog drained before the scale-down: test is moot"
    counts = results.summary()
    assert counts.rows == counts.distinct_requests == backlog
    assert exit_codes == [0, 0, 0]


def test_crashed_consumer_is_restarted(settings: Settings, tmp_path: Path) -> None:
    with Supervisor(
        settings, tmp_path / "consumers", restart_backoff_s=0.2, stop_timeout_s=30
    ) as supervisor:
        supervisor.scale_to(1)
        first = supervisor.processes[0]
        time.sleep(1.0)
        first.popen.send_signal(signal.SIGKILL)
        first.popen.wait(10)
        deadline = time.monotonic() + 10
        while supervisor.restarts == 0 or supervisor.running < 1:
            assert time.monotonic() < deadline, "crashed consumer was not restarted"
            supervisor.reconcile()
            time.sleep(0.1)
        assert supervisor.processes[0].pid != first.pid
        assert -signal.SIGKILL in supervisor.exit_codes
