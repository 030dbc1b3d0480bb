"""The staged pipeline (issue 11) on the real RabbitMQ and PostgreSQL.

raw CSV rows → preprocess → features → score → PostgreSQL, each stage a process of its own.
Every stage is SIGKILLed once while it has work in hand; the store must still hold exactly one
row per record, with the fused path's probability for that record.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pika
import pytest

from creditstream.scoring import OnnxScorer
from creditstream.settings import Settings
from creditstream.stages.raw import raw_rows
from creditstream.stages.topology import (
    STAGE_HEADER,
    delete_stages,
    stage_settings,
)
from creditstream.topology import REASON_HEADER
from tests.helpers import (
    PG_URL,
    Processes,
    count_rows,
    ready_in_queue,
    run_cli,
    stored_rows,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def staged_settings(
    make_settings: Callable[..., Settings], pg_schema: str
) -> Iterator[Callable[..., Settings]]:
    """Settings into PostgreSQL (own schema) with the stage queues removed afterwards."""
    made: list[Settings] = []

    def build(**overrides: object) -> Settings:
        settings = make_settings(database_url=PG_URL, database_schema=pg_schema, **overrides)
        made.append(settings)
        return settings

    try:
        yield build
    finally:
        for settings in made[:1]:
            delete_stages(settings)


def fused_probabilities(settings: Settings, data: Path, limit: int) -> dict[str, float]:
    """What the fused path computes for the same records (its scorer, on the parsed rows)."""
    from creditstream.contract import FEATURES, ID_FIELD

    rows = list(raw_rows(data, limit))
    X = np.array([[float(row[name]) for name in FEATURES] for row in rows], dtype=np.float32)
    p = OnnxScorer.from_settings(settings).predict_default_probability(X)
    return {row[ID_FIELD]: float(value) for row, value in zip(rows, p, strict=True)}


def _kill_mid_run(
    processes: Processes,
    settings: Settings,
    stage: str,
    busy: Callable[[], bool],
    args: list[str],
) -> None:
    """Start `stage`, SIGKILL it once `busy()` says it is mid-run, start it again."""
    process = processes.start(["stage", stage, *args], settings, stage)
    wait_until(busy, timeout=240, interval=0.05, message=f"{stage} mid-run")
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    left = ready_in_queue(stage_settings(settings, stage))
    assert left > 0, f"{stage} had finished its queue before the kill: nothing was proven"
    processes.start(["stage", stage, *args], settings, f"{stage}-again")


def run_staged_with_kills(
    settings: Settings, processes: Processes, data: Path, n: int, tmp_path: Path
) -> dict[str, float]:
    """Produce n raw rows, run the three stages with one SIGKILL each; the measured figures."""
    started = time.monotonic()
    produced = run_cli(
        [
            "produce",
            "--pipeline",
            "staged",
            "--data",
            str(data),
            "--limit",
            str(n),
            "--no-progress",
        ],
        settings,
        timeout=600,
    )
    assert produced.returncode == 0, produced.stderr[-2000:]
    assert f"produced {n} records in {n} messages" in produced.stdout
    assert ready_in_queue(stage_settings(settings, "preprocess")) == n

    step = max(50, n // 10)
    _kill_mid_run(
        processes,
        settings,
        "preprocess",
        lambda: ready_in_queue(stage_settings(settings, "features")) >= step,
        ["--batch-size", "64"],
    )
    _kill_mid_run(
        processes,
        settings,
        "features",
        lambda: ready_in_queue(stage_settings(settings, "score")) >= step,
        ["--batch-size", "64"],
    )
    _kill_mid_run(
        processes,
        settings,
        "score",
        lambda: count_rows(settings) >= step,
        ["--batch-size", "256"],
    )
    wait_until(
        lambda: count_rows(settings) >= n,
        timeout=max(300, n / 20),
        interval=0.5,
        message=f"{n} stored rows",
    )
    elapsed = time.monotonic() - started
    time.sleep(1.5)  # a duplicate would land now
    processes.stop_all()

    rows = stored_rows(settings)
    assert len(rows) == n, "exactly one row per record"
    assert len({r.record_id for r in rows}) == n
    expected = fused_probabilities(settings, data, n)
    assert {r.record_id for r in rows} == set(expected)
    diff = max(abs(r.probability - expected[r.record_id]) for r in rows)
    assert diff <= 1e-6, f"staged vs fused max |Δp| = {diff}"
    for stage in ("preprocess", "features", "score"):
        assert ready_in_queue(stage_settings(settings, stage)) == 0, f"{stage} queue drained"
    return {"records": n, "seconds": elapsed, "max_abs_diff": diff}


@pytest.mark.timeout(600)
def test_staged_pipeline_with_a_sigkill_of_each_stage_is_exactly_once(
    staged_settings: Callable[..., Settings],
    processes: Processes,
    data_path: Path,
    tmp_path: Path,
) -> None:
    settings = staged_settings()
    figures = run_staged_with_kills(settings, processes, data_path, 3000, tmp_path)
    print(f"staged pipeline (3,000, one SIGKILL per stage): {figures}")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_30000_records_staged_with_a_sigkill_of_each_stage_is_exactly_once(
    staged_settings: Callable[..., Settings],
    processes: Processes,
    data_path: Path,
    tmp_path: Path,
) -> None:
    settings = staged_settings()
    figures = run_staged_with_kills(settings, processes, data_path, 30_000, tmp_path)
    print(f"staged pipeline (30,000, one SIGKILL per stage): {figures}")


@pytest.mark.timeout(180)
def test_bad_raw_rows_are_dead_lettered_by_preprocess_with_the_stage_in_the_reason(
    staged_settings: Callable[..., Settings],
    processes: Processes,
    data_path: Path,
    tmp_path: Path,
) -> None:
    settings = staged_settings()
    rows = list(raw_rows(data_path, 3))
    rows[1] = {**rows[1], "LIMIT_BAL": "twenty thousand"}
    rows[2] = {k: v for k, v in rows[2].items() if k != "AGE"}
    raw = tmp_path / "raw.csv"
    import csv

    with raw.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    produced = run_cli(
        ["produce", "--pipeline", "staged", "--data", str(raw), "--no-progress"], settings
    )
    assert produced.returncode == 0, produced.stderr[-2000:]
    for stage in ("preprocess", "features", "score"):
        processes.start(["stage", stage, "--exit-when-idle", "3"], settings, stage)
    wait_until(lambda: count_rows(settings) >= 1, timeout=120, message="the good row")
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url.get_secret_value()))
    try:
        channel = connection.channel()
        reasons = set()
        deadline = time.monotonic() + 60
        while len(reasons) < 2 and time.monotonic() < deadline:
            method, props, _body = channel.basic_get(settings.dead_letter_queue, auto_ack=True)
            if method is None:
                time.sleep(0.2)
                continue
            assert props.headers[STAGE_HEADER] == "preprocess"
            reasons.add(props.headers[REASON_HEADER])
    finally:
        connection.close()
    assert reasons == {"preprocess:wrong-type", "preprocess:missing-field"}
    assert [r.record_id for r in stored_rows(settings)] == [rows[0]["ID"]]
