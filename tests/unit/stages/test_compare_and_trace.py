"""results compare's AUC, the trace header and the bench's per-stage latency split (pure)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from creditstream.stages.bench import stage_latencies
from creditstream.stages.compare import roc_auc
from creditstream.stages.metrics import last_timestamp, trace_of
from creditstream.topology import SENT_AT_HEADER

pytestmark = pytest.mark.unit


def test_roc_auc_matches_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) + labels * 0.3, 1)  # NOTE: many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(np.zeros(3, dtype=np.int64), np.array([0.1, 0.2, 0.3])) is None


def test_trace_starts_at_the_producers_sent_at_and_keeps_stage_stamps() -> None:
    headers = {SENT_AT_HEADER: 100, "x-creditstream-trace": {"preprocess.in": 150, "bad": "x"}}
    trace = trace_of(headers)
    assert trace == {"produce": 100, "preprocess.in": 150}
    assert last_timestamp(trace) == 150
    assert trace_of(None) == {} and last_timestamp({}) is None


def test_stage_latencies_split_each_record_by_segment() -> None:
    trace = {
        "produce": 1_000_000,
        "preprocess.in": 1_010_000,
        "preprocess.out": 1_012_000,
        "features.in": 1_020_000,
        "features.out": 1_021_000,
    }
    figures = stage_latencies({"m|preprocess|features": trace}, {"m|preprocess|features": 1.05})
    assert figures["preprocess wait"]["p50_ms"] == pytest.approx(10.0)
    assert figures["preprocess work"]["p50_ms"] == pytest.approx(2.0)
    assert figures["features wait"]["p50_ms"] == pytest.approx(8.0)
    assert figures["features work"]["p50_ms"] == pytest.approx(1.0)
    assert figures["score (wait + work + commit)"]["p50_ms"] == pytest.approx(29.0)
    assert figures["end to end"]["p50_ms"] == pytest.approx(50.0)
