"""The demo's latency promise on the real broker: steady-state publish -> stored p99 <= 1 s.

A burst starts with no consumer: records published before the first one is ready wait for
KEDA's poll, the management API's statistics and the consumer's start (the cold part). Every
record published after that (steady state) waits behind that cold backlog, first in first out,
so the steady p99 holds only if one consumer with the demo's knobs drains the backlog in well
under a second on top of keeping up with the producer. The short test pins that capacity with
headroom; the slow one runs a real demo burst and asserts the p99 itself.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from creditstream.demo.load import DEFAULT_BURST_RATE, LoadProfile
from creditstream.demo.run import DemoOptions, run_demo
from creditstream.demo.values import load_demo_values
from creditstream.harness import ProcessGroup, isolated_run
from creditstream.harness.results import ResultsReader
from creditstream.settings import Settings
from tests.helpers import AMQP_URL, MODELS, run_cli, wait_until

pytestmark = [pytest.mark.integration]

BACKLOG = 6_000
# NOTE: measured on this 2-core machine under the other suites' load: one consumer with the
# chart's knobs drained 4,000-8,000 records/s; with the former demo knobs (batch 4 / prefetch
# 4) ~300/s, less than the producer. Twice the producer's rate leaves 2-4x headroom.
MIN_RATIO = 2.0


@pytest.mark.timeout(240)
def test_one_consumer_with_the_demo_knobs_drains_twice_as_fast_as_the_demo_produces(
    tmp_path: Path,
) -> None:
    knobs = load_demo_values([], "unused").consumer
    base = Settings(amqp_url=AMQP_URL, model_path=MODELS / "credit_default.onnx")
    prefix = f"creditstream.test.democap.{uuid.uuid4().hex[:8]}"
    with isolated_run(
        base,
        prefix,
        sqlite_file=tmp_path / "results.sqlite",
        batch_size=knobs.batch_size,
        batch_timeout_ms=knobs.batch_timeout_ms,
        prefetch=knobs.prefetch,
        run_id=prefix,
    ) as settings:
        published = run_cli(
            ["produce", "--synthetic", "--limit", str(BACKLOG), "--rate", "1e9", "--no-progress"],
            settings,
            timeout=180,
        )
        assert published.returncode == 0, published.stderr[-2000:]
        with ProcessGroup(tmp_path / "logs", settings) as group, ResultsReader(settings) as reader:
            consumer = group.start(["consume"], name="consumer", http=True)
            wait_until(consumer.ready, timeout=60, message="the consumer's /readyz")
            started = time.monotonic()
            wait_until(lambda: reader.count() >= BACKLOG, timeout=120, interval=0.05)
            seconds = time.monotonic() - started
    rate = BACKLOG / seconds
    assert rate >= MIN_RATIO * DEFAULT_BURST_RATE, (
        f"one consumer ({knobs.describe()}) scored {rate:.0f} records/s; the demo publishes "
        f"{DEFAULT_BURST_RATE:g}/s, so a cold-start backlog would not drain"
    )


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_a_demo_burst_keeps_the_steady_state_p99_within_one_second(tmp_path: Path) -> None:
    base = Settings(amqp_url=AMQP_URL, model_path=MODELS / "credit_default.onnx")
    options = DemoOptions(
        profile=LoadProfile(first_burst=10_000, second_burst=0),
        runs_dir=tmp_path,
        dashboard=False,
        max_duration_s=240,
        allow_download=False,
    )
    assert run_demo(base, options) == 0
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["every_record_scored_once"]
    assert summary["scale_to_zero_while_producing_s"] == []
    (burst,) = summary["latency_by_burst"]
    assert burst["published_not_stored"] == 0
    assert burst["first_consumer_ready_after_s"] is not None, "no consumer ready during the burst"
    assert burst["cold"]["records"] > 0, "the burst must start from zero replicas"
    assert burst["steady"]["records"] > 0
    assert burst["steady"]["p99_ms"] <= 1000, burst
