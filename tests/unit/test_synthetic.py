"""The SYNTHETIC record source: valid records, distinct IDs, seeded, numpy only."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from creditstream.codec import ValidRecord, validate_record
from creditstream.contract import FEATURE_SPECS, FEATURES, ID_FIELD
from creditstream.synthetic import (
    QUANTILE_LEVELS,
    build_synthetic_section,
    iter_synthetic_records,
    synthetic_id,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]
COMMITTED_CARD = Path(__file__).resolve().parents[2] / "models" / "model_card.json"


def fixture_features(rows: int = 5000, seed: int = 3) -> np.ndarray:
    """A [rows, 23] array with skewed codes and heavy-tailed amounts (not real data)."""
    rng = np.random.default_rng(seed)
    columns = []
    for name in FEATURES:
        spec = FEATURE_SPECS[name]
        if spec.integer:
            low, high = int(spec.minimum), int(spec.maximum)
            weights = rng.random(high - low + 1) ** 3
            columns.append(rng.choice(np.arange(low, high + 1), rows, p=weights / weights.sum()))
        else:
            columns.append(np.rint(rng.lognormal(10, 1.5, rows)) + 1)
    return np.stack(columns, axis=1).astype(np.float64)


@pytest.fixture(scope="module")
def section() -> dict[str, Any]:
    return build_synthetic_section(fixture_features())


def test_section_shape(section: dict[str, Any]) -> None:
    assert section["kind"] == "independent-marginals"
    assert list(section["features"]) == list(FEATURES)
    for name, entry in section["features"].items():
        assert len(entry["quantiles"]) == QUANTILE_LEVELS
        assert ("categories" in entry) == FEATURE_SPECS[name].integer
    json.dumps(section, allow_nan=False)


def test_records_are_valid_and_labelled_synthetic(section: dict[str, Any]) -> None:
    records = list(iter_synthetic_records(section, 3000, seed=1))
    assert len(records) == 3000
    for number, record in enumerate(records, start=1):
        assert isinstance(validate_record(record), ValidRecord), record
        assert record[ID_FIELD] == synthetic_id(number)
        assert record[ID_FIELD].startswith("syn-")
    assert json.loads(json.dumps(records)) == records


@pytest.mark.parametrize(
    ("seed_a", "seed_b", "same"),
    [pytest.param(5, 5, True, id="same-seed"), pytest.param(5, 6, False, id="other-seed")],
)
def test_seeded(section: dict[str, Any], seed_a: int, seed_b: int, same: bool) -> None:
    first = list(iter_synthetic_records(section, 500, seed=seed_a))
    second = list(iter_synthetic_records(section, 500, seed=seed_b))
    assert (first == second) is same


def test_prefix_does_not_depend_on_n(section: dict[str, Any]) -> None:
    short = list(iter_synthetic_records(section, 10, seed=2))
    endless = list(itertools.islice(iter_synthetic_records(section, None, seed=2), 2500))
    assert endless[:10] == short
    assert endless[-1][ID_FIELD] == "syn-002500"


def test_marginals_follow_the_card(section: dict[str, Any]) -> None:
    drawn = np.array(
        [[r[name] for name in FEATURES] for r in iter_synthetic_records(section, 20000, seed=9)]
    )
    for index, name in enumerate(FEATURES):
        entry = section["features"][name]
        if "categories" in entry:
            values = np.asarray(entry["categories"]["values"])
            expected = np.asarray(entry["categories"]["frequencies"])
            observed = np.array([(drawn[:, index] == v).mean() for v in values])
            assert np.abs(observed - expected).max() < 0.015, name
            assert set(np.unique(drawn[:, index])) <= set(values.tolist()), name
        else:
            quantiles = np.asarray(entry["quantiles"])
            median = np.median(drawn[:, index])
            assert quantiles[45] <= median <= quantiles[55], name
            assert quantiles[0] <= drawn[:, index].min()
            assert drawn[:, index].max() <= quantiles[-1]


def test_rejects_a_card_without_a_synthetic_section() -> None:
    with pytest.raises(ValueError, match="no 'independent-marginals' synthetic section"):
        next(iter_synthetic_records({"version": "1"}, 1, seed=0))


def test_needs_neither_pandas_nor_sklearn() -> None:
    code = (
        "import sys, creditstream.synthetic, creditstream.model_card\n"
        "bad = sorted(m for m in ('pandas', 'sklearn', 'scipy') if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


@pytest.mark.skipif(not COMMITTED_CARD.is_file(), reason="no committed models/model_card.json")
def test_committed_card_yields_valid_records() -> None:
    card = json.loads(COMMITTED_CARD.read_text(encoding="utf-8"))
    for record in iter_synthetic_records(card, 2000, seed=0):
        assert isinstance(validate_record(record), ValidRecord), record
