"""The core path against the real RabbitMQ and PostgreSQL: produce → consume → store."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from creditstream.model_card import load_model_card
from creditstream.settings import Settings
from tests.helpers import (
    MODELS,
    PG_URL,
    Processes,
    count_rows,
    free_port,
    run_cli,
    scrape_metric,
    stored_rows,
    wait_until,
)

pytestmark = pytest.mark.integration


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties averaged), no scikit-learn needed."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.mark.timeout(600)
def test_full_data_set_through_two_consumers_into_postgresql(
    make_settings: Callable[..., Settings],
    pg_schema: str,
    processes: Processes,
    data_path: Path,
) -> None:
    settings = make_settings(database_url=PG_URL, database_schema=pg_schema)
    ports = [free_port(), free_port()]
    consumers = [
        processes.start(["consume", "--http-port", str(port)], settings, "consumer")
        for port in ports
    ]
    producer = run_cli(["produce", "--data", str(data_path), "--no-progress"], settings)
    assert producer.returncode == 0, producer.stderr[-2000:]
    assert "produced 30000 records in 30000 messages" in producer.stdout
    wait_until(
        lambda: count_rows(settings) >= 30_000,
        timeout=300,
        interval=1,
        message="30,000 stored predictions",
    )
    time.sleep(1.0)  # anything extra (a duplicate) would land now
    per_consumer = [
        scrape_metric(port, 'creditstream_records_total{outcome="scored"}') for port in ports
    ]
    for consumer in consumers:
        consumer.send_signal(signal.SIGTERM)
    assert [c.wait(timeout=30) for c in consumers] == [0, 0]

    rows = stored_rows(settings)
    assert len(rows) == 30_000
    record_ids = sorted(int(record_id) for _, record_id, _ in rows)
    assert record_ids == list(range(1, 30_001)), "each record exactly once"
    assert all(count > 0 for count in per_consumer), f"both consumers worked: {per_consumer}"

    import pandas as pd

    labels = pd.read_csv(data_path, usecols=["ID", "default.payment.next.month"]).set_index("ID")
    probability = {int(record_id): p for _, record_id, p in rows}
    ordered_ids = labels.index.to_numpy()
    scores = np.array([probability[i] for i in ordered_ids])
    measured = auc(labels["default.payment.next.month"].to_numpy(), scores)
    card = load_model_card(MODELS / "model_card.json")
    expected = card.document["metrics"]["full_data"]["auc"]
    assert measured == pytest.approx(expected, abs=1e-6)


@pytest.mark.timeout(300)
def test_sigterm_mid_stream_loses_nothing_and_scores_nothing_twice(
    make_settings: Callable[..., Settings],
    processes: Processes,
) -> None:
    settings = make_settings()
    produced = run_cli(["produce", "--synthetic", "--limit", "20000", "--no-progress"], settings)
    assert produced.returncode == 0, produced.stderr[-2000:]
    first = processes.start(["consume", "--batch-size", "64"], settings, "first")
    wait_until(lambda: count_rows(settings) >= 3_000, timeout=120, message="first rows")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0, "SIGTERM drains and exits 0"
    after_first = count_rows(settings)
    assert after_first < 20_000, "stopped mid-stream"
    port = free_port()
    second = processes.start(["consume", "--http-port", str(port)], settings, "second")
    wait_until(lambda: count_rows(settings) >= 20_000, timeout=180, message="all rows")
    time.sleep(0.5)
    redelivered = scrape_metric(port, "creditstream_redelivered_messages_total")
    duplicates = scrape_metric(port, "creditstream_duplicate_records_total")
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
    rows = stored_rows(settings)
    assert len(rows) == 20_000
    assert len({record_id for _, record_id, _ in rows}) == 20_000
    # Everything the first consumer scored it also acked before exiting, so nothing was scored
    # twice. (Deliveries still in flight when it cancelled are requeued unscored; the second
    # consumer sees those as redelivered, which is fine.)
    assert duplicates == 0, f"{duplicates} records scored twice ({redelivered:g} redelivered)"
    log = Path(first.log_path).read_text()  # type: ignore[attr-defined]
    assert "draining" in log


@pytest.mark.timeout(120)
def test_smoke_test_command_round_trip(
    make_settings: Callable[..., Settings],
    processes: Processes,
) -> None:
    settings = make_settings()
    processes.start(["consume"], settings, "consumer")
    result = run_cli(["smoke-test", "--timeout", "30"], settings, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    reply = json.loads(result.stdout.strip().splitlines()[-1])
    assert reply["smoke_test"] == "passed"
    assert 0.0 <= reply["prediction"]["probability"] <= 1.0


@pytest.mark.timeout(60)
def test_smoke_test_fails_without_a_consumer(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    result = run_cli(["smoke-test", "--timeout", "2"], settings, timeout=60)
    assert result.returncode == 1
    assert "no reply within 2s" in result.stderr


@pytest.mark.timeout(60)
def test_producer_exits_non_zero_when_nothing_is_confirmed(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/", broker_wait_s=1
    )
    result = run_cli(
        ["produce", "--synthetic", "--limit", "10", "--no-progress"], settings, timeout=60
    )
    assert result.returncode != 0
    assert "guest:guest" not in result.stderr + result.stdout, "credentials never logged"


@pytest.mark.timeout(60)
def test_existing_queue_with_other_arguments_gives_a_fix_it_error(
    make_settings: Callable[..., Settings],
) -> None:
    old = make_settings(delivery_limit=5)
    assert run_cli(["produce", "--synthetic", "--limit", "1", "--no-progress"], old).returncode == 0
    new = make_settings(delivery_limit=7)
    produced = run_cli(["produce", "--synthetic", "--limit", "1", "--no-progress"], new)
    consumed = run_cli(["consume", "--exit-when-idle", "1"], new)
    assert produced.returncode == 2 and consumed.returncode == 2
    assert "drain and delete the queue" in produced.stderr
    assert "drain and delete the queue" in consumed.stderr


@pytest.mark.timeout(60)
def test_unreachable_broker_is_reported_without_credentials(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        amqp_url=f"amqp://app:hunter2@127.0.0.1:{free_port()}/", broker_wait_s=1
    )
    result = run_cli(["produce", "--synthetic", "--limit", "1", "--no-progress"], settings)
    assert result.returncode == 1
    assert "RabbitMQ unreachable at amqp://app:***@127.0.0.1" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
