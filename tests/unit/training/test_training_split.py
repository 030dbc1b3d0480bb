"""Hold-out split and threshold choice (no data set needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from creditstream.contract import FEATURES, ID_FIELD, LABEL_FIELD
from creditstream.training.pipeline import CANDIDATES, choose_threshold, split_holdout

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def frame(rows: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {ID_FIELD: np.arange(1, rows + 1)}
    data.update({name: rng.integers(0, 5, rows) for name in FEATURES})
    data[LABEL_FIELD] = (rng.random(rows) < 0.22).astype(int)
    return pd.DataFrame(data)


def test_split_is_80_20_stratified_disjoint_and_order_free() -> None:
    data = frame()
    split = split_holdout(data)
    assert (len(split.ids_train), len(split.ids_test)) == (800, 200)
    assert not set(split.ids_train) & set(split.ids_test)
    assert abs(split.y_test.mean() - data[LABEL_FIELD].mean()) < 0.01
    shuffled = split_holdout(data.sample(frac=1.0, random_state=3))
    np.testing.assert_array_equal(shuffled.ids_test, split.ids_test)
    assert split.X_train.dtype == np.float32 and split.X_train.shape[1] == 23


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed{s}") for s in range(3)])
def test_threshold_maximises_f1(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(600) < 0.25).astype(int)
    p = np.clip(rng.normal(0.3 + 0.25 * y, 0.2), 0, 1).round(3)
    chosen = choose_threshold(y, p)
    best = max(f1_score(y, p >= t) for t in np.unique(p))
    assert f1_score(y, p >= chosen) == pytest.approx(best, abs=1e-12)


def test_candidate_names_are_unique() -> None:
    assert len({c.name for c in CANDIDATES}) == len(CANDIDATES)
