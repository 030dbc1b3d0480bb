"""The staged pipeline's features and model graphs: cut from the fused model, equal to it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from creditstream.data.dataset import load_dataset
from creditstream.settings import Settings
from creditstream.stages.graphs import (
    ENGINEERED,
    FEATURES_FILE,
    FUSED_FILE,
    MODEL_FILE,
    compose,
    split_fused,
)
from creditstream.training.pipeline import split_holdout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
MODELS = Path(__file__).resolve().parents[2] / "models"
DATA = Settings().data_path


def _session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def test_card_lists_the_three_graphs_with_their_sha256() -> None:
    card = json.loads((MODELS / "model_card.json").read_text(encoding="utf-8"))
    graphs = card["graphs"]
    for role, name in (("fused", FUSED_FILE), ("features", FEATURES_FILE), ("model", MODEL_FILE)):
        data = (MODELS / name).read_bytes()
        assert graphs[role]["file"] == name
        assert graphs[role]["sha256"] == hashlib.sha256(data).hexdigest(), role
    assert graphs["fused"]["sha256"] == card["onnx"]["sha256"]
    assert graphs["features"]["outputs"] == {ENGINEERED: [None, 38]}
    assert graphs["model"]["inputs"] == {ENGINEERED: [None, 38]}


def test_committed_graphs_are_the_cut_of_the_committed_fused_model() -> None:
    features, model = split_fused((MODELS / FUSED_FILE).read_bytes())
    assert features == (MODELS / FEATURES_FILE).read_bytes()
    assert model == (MODELS / MODEL_FILE).read_bytes()


@pytest.mark.skipif(not DATA.is_file(), reason=f"UCI data set absent at {DATA}")
def test_compose_of_features_and_model_equals_the_fused_graph_on_the_holdout() -> None:
    X = split_holdout(load_dataset(DATA, expect_full=True)).X_test
    assert X.shape == (6000, 23)
    features = (MODELS / FEATURES_FILE).read_bytes()
    model = (MODELS / MODEL_FILE).read_bytes()
    fused = _session((MODELS / FUSED_FILE).read_bytes()).run(None, {"features": X})
    composed = _session(compose(features, model)).run(None, {"features": X})
    np.testing.assert_array_equal(composed[0], fused[0])  # labels
    assert np.max(np.abs(composed[1] - fused[1])) <= 1e-6
    # The two stages run apart, as the pipeline runs them, give the same probabilities.
    (engineered,) = _session(features).run([ENGINEERED], {"features": X})
    assert engineered.shape == (6000, 38) and engineered.dtype == np.float32
    (staged,) = _session(model).run(["probabilities"], {ENGINEERED: engineered})
    assert np.max(np.abs(staged - fused[1])) <= 1e-6
