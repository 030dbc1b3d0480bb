"""The benchmark scenarios against the real RabbitMQ and PostgreSQL, at toy sizes.

Checks that each scenario measures something real (every record accounted for, sane figures)
and leaves nothing behind (its queues, exchanges and PostgreSQL schema are gone afterwards).
The figures themselves are not judged here: `make bench-quick` and `make bench` do that.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from sqlalchemy import create_engine, text

from creditstream.bench.plan import BenchPlan, ConsumerCase
from creditstream.bench.report import sanity_problems
from creditstream.bench.runner import (
    BenchContext,
    run_ceiling,
    run_consumer_case,
    run_latency,
    run_producer,
    run_seed_style,
    scenario,
)
from creditstream.settings import REPO_ROOT, Settings
from tests.helpers import AMQP_URL, MODELS, PG_URL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOY_PLAN = BenchPlan(
    quick=True,
    ceiling_messages=500,
    seed_style_messages=40,
    seed_style_max_s=10.0,
    consumer_cases=(
        ConsumerCase(1, "sqlite", 1, 600),
        ConsumerCase(2, "postgresql", 100, 2_000),
    ),
    producer_records={1: 500},
    latency_rates=(200.0,),
    latency_duration_s=1.0,
    latency_warmup=10,
    drain_timeout_s=90.0,
)


@pytest.fixture
def ctx(tmp_path: Path) -> BenchContext:
    base = Settings(
        amqp_url=AMQP_URL,
        model_path=MODELS / "credit_default.onnx",
        broker_wait_s=10,
        log_format="json",
    )
    # NOTE: the seed-style pickle is shared with `creditstream bench` (fitted once per model).
    cache = REPO_ROOT / ".cache" / "bench"
    return BenchContext(base, TOY_PLAN, PG_URL, tmp_path, cache, say=lambda _: None)


def _queue_exists(name: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        connection.channel().queue_declare(name, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    finally:
        if connection.is_open:
            connection.close()


def _schema_exists(name: str) -> bool:
    engine = create_engine(PG_URL)
    try:
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    text("SELECT count(*) FROM information_schema.schemata WHERE schema_name = :s"),
                    {"s": name},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def _assert_measured(entry: dict[str, Any], records: int) -> None:
    assert entry.get("error") is None, entry
    assert entry["records"] == records
    assert math.isfinite(entry["records_per_s"]) and entry["records_per_s"] > 0
    assert 0 < entry["seconds"] < 90


def test_isolation_removes_queues_and_schema(ctx: BenchContext) -> None:
    with scenario(ctx, "isolation", "postgresql") as settings:
        assert _queue_exists(settings.requests_queue)
        assert settings.database_schema and _schema_exists(settings.database_schema)
        assert settings.requests_queue != ctx.base.requests_queue
    assert not _queue_exists(settings.requests_queue)
    assert not _queue_exists(settings.dead_letter_queue)
    assert not _schema_exists(settings.database_schema)


def test_producer_ceiling_and_consumer_cases(ctx: BenchContext) -> None:
    producer = run_producer(ctx, 1)
    _assert_measured(producer, 500)

    ceiling = run_ceiling(ctx)
    _assert_measured(ceiling, 500)
    assert ceiling["messages"] == 500

    single = run_consumer_case(ctx, TOY_PLAN.consumer_cases[0])
    _assert_measured(single, 600)
    assert 0 < single["cold_start_s"] < 60
    assert 20 < single["peak_rss_mb"] < 4096

    pair = run_consumer_case(ctx, TOY_PLAN.consumer_cases[1])
    _assert_measured(pair, 2_000)
    assert pair["messages"] == 20

    report = {
        "throughput": {"ceiling": ceiling, "single": single, "pair": pair},
        "producer": {"producer-1rpm": producer},
        "latency": [],
        "startup": {"cold_start_s": single["cold_start_s"], "peak_rss_mb": single["peak_rss_mb"]},
    }
    assert sanity_problems(report) == []


def test_request_reply_latency_open_loop(ctx: BenchContext) -> None:
    (result,) = run_latency(ctx)
    assert result["sent"] == 200
    assert result["replied"] == 200 and result["errors"] == 0
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"]


def test_seed_style_baseline(ctx: BenchContext, data_path: Path) -> None:
    ctx.base = ctx.base.model_copy(update={"data_path": data_path})
    entry = run_seed_style(ctx)
    assert entry.get("error") is None, entry
    assert 0 < entry["records"] <= 40
    assert entry["records_per_s"] > 0
    assert list((ctx.cache_dir).glob("seed-style-*.pkl"))
