"""AUC and the demo's configuration layering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from creditstream.autoscale.rule import load_chart_values
from creditstream.demo.run import choose_data
from creditstream.demo.summary import BurstTiming, auc_against_labels, burst_latency, roc_auc
from creditstream.demo.values import CHART_VALUES, DEMO_OVERRIDES, load_demo_values
from creditstream.settings import Settings

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        pytest.param([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0, id="perfect"),
        pytest.param([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0, id="inverted"),
        pytest.param([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5, id="all-ties"),
        pytest.param([0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.9], 4 / 6, id="mixed"),
    ],
)
def test_roc_auc(labels: list[int], scores: list[float], expected: float) -> None:
    assert roc_auc(labels, scores) == pytest.approx(expected)


def test_roc_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 2)  # rounding makes ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(y, s) == pytest.approx(pairwise / (len(pos) * len(neg)))


def test_auc_against_labels_uses_common_records_only() -> None:
    probabilities = {"1": 0.9, "2": 0.1, "3": 0.8, "99": 0.5}
    labels = {"1": 1, "2": 0, "3": 0, "4": 1}
    assert auc_against_labels(probabilities, labels) == (1.0, 3)  # 0.9 beats 0.1 and 0.8
    assert auc_against_labels({"1": 0.3}, {"1": 1}) is None


def test_autoscaling_is_chart_values_plus_printed_overrides() -> None:
    values = load_demo_values([{"autoscaling": {"maxReplicaCount": 3}}], "q.demo")
    config, lines = values.autoscaling, values.override_lines
    assert config.cooldown_period_s == DEMO_OVERRIDES["autoscaling"]["cooldownPeriod"]
    assert config.max_replica_count == 3
    assert config.queue_name == "q.demo"
    assert "autoscaling.cooldownPeriod=20" in lines
    assert "autoscaling.maxReplicaCount=3" in lines


def test_consumer_knobs_are_chart_values_plus_printed_overrides() -> None:
    demo = load_demo_values([], "q.demo")
    chart = load_chart_values(CHART_VALUES)["consumer"]
    # NOTE: the demo runs the consumer as the chart does (no throttled batch any more).
    assert "consumer" not in DEMO_OVERRIDES
    assert (demo.consumer.batch_size, demo.consumer.batch_timeout_ms, demo.consumer.prefetch) == (
        chart["batchSize"],
        chart["batchTimeoutMs"],
        chart["prefetch"],
    )
    assert not [line for line in demo.override_lines if line.startswith("consumer.batch")]
    own = load_demo_values([{"consumer": {"batchSize": 8, "prefetch": 8}}], "q.demo")
    assert (own.consumer.batch_size, own.consumer.prefetch) == (8, 8)
    assert "consumer.batchSize=8" in own.override_lines  # the user's --set printed too


def test_choose_data_says_synthetic_when_nothing_is_available(tmp_path: Path) -> None:
    settings = Settings(data_path=tmp_path / "missing.csv", cache_dir=tmp_path / "cache")
    choice = choose_data(settings, allow_download=False)
    assert choice.kind == "synthetic" and choice.path is None
    assert "SYNTHETIC" in choice.note


def test_choose_data_prefers_the_real_file() -> None:
    settings = Settings()
    if not settings.data_path.is_file():
        pytest.skip(f"data set not found at {settings.data_path}")
    choice = choose_data(settings, allow_download=False)
    assert (choice.kind, choice.path) == ("data set", settings.data_path)


def test_burst_latency_splits_at_the_first_ready_consumer() -> None:
    bursts = [
        BurstTiming("burst 1", "run-burst1", started_at=100.0, first_ready_at=104.0),
        BurstTiming("burst 2", "run-burst2", started_at=200.0, first_ready_at=200.0),
    ]
    sent = {
        "run-burst1-0": 100.0,  # waits for the cold start: 6 s
        "run-burst1-1": 103.9,
        "run-burst1-2": 104.0,  # published once a consumer was ready: steady
        "run-burst1-3": 105.0,
        "run-burst1-4": 106.0,  # never stored
        "run-burst2-0": 200.5,
        "other-0": 100.0,  # not the demo's
    }
    stored = {
        "run-burst1-0": 106.0,
        "run-burst1-1": 106.1,
        "run-burst1-2": 104.2,
        "run-burst1-3": 105.1,
        "run-burst2-0": 200.6,
    }
    first, second = burst_latency(bursts, sent, stored)
    assert first["first_consumer_ready_after_s"] == 4.0
    # NOTE: the producer process publishes its first record a moment after it was started.
    assert first["first_publish_after_s"] == 0.0
    assert first["first_consumer_ready_after_first_publish_s"] == 4.0
    assert second["first_publish_after_s"] == 0.5
    assert second["first_consumer_ready_after_first_publish_s"] == 0.0  # ready before it
    assert first["cold"]["records"] == 2 and first["cold"]["max_ms"] == 6000.0
    assert first["steady"]["records"] == 2 and first["steady"]["max_ms"] == pytest.approx(200.0)
    assert first["published_not_stored"] == 1
    # A consumer already ready when the burst began: nothing pays a cold start.
    assert second["cold"]["records"] == 0 and second["cold"]["p99_ms"] is None
    assert second["steady"]["records"] == 1
