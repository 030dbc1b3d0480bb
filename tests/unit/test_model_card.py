"""load_model_card: version and threshold for the consumer, clear errors otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from creditstream.model_card import ModelCardError, load_model_card

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]
COMMITTED_CARD = Path(__file__).resolve().parents[2] / "models" / "model_card.json"


def test_reads_version_and_threshold(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    path.write_text(
        json.dumps(
            {"version": "1.0.0+abc", "threshold": {"value": 0.3}, "onnx": {"sha256": "f" * 64}}
        )
    )
    card = load_model_card(path)
    assert (card.version, card.threshold, card.onnx_sha256) == ("1.0.0+abc", 0.3, "f" * 64)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(None, "no model card at", id="absent"),
        pytest.param("{not json", "is not JSON", id="not-json"),
        pytest.param(json.dumps({"threshold": {"value": 0.3}}), "lacks version", id="no-version"),
        pytest.param(
            json.dumps({"version": "1", "threshold": 0.3}),
            "lacks version or threshold",
            id="flat-threshold",
        ),
        pytest.param(
            json.dumps({"version": "1", "threshold": {"value": 1.5}}),
            "outside [0, 1]",
            id="threshold-range",
        ),
    ],
)
def test_errors(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "card.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ModelCardError) as caught:
        load_model_card(path)
    assert expected in str(caught.value)


@pytest.mark.skipif(not COMMITTED_CARD.is_file(), reason="no committed models/model_card.json")
def test_committed_card() -> None:
    card = load_model_card(COMMITTED_CARD)
    assert card.version.startswith("1.0.0+")
    assert card.onnx_sha256 is not None and card.version.endswith(card.onnx_sha256[:12])
    assert 0.05 < card.threshold < 0.95
