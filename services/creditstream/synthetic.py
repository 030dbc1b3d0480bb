"""SYNTHETIC request records drawn from the marginal distributions stored in the model card.

Every feature is drawn independently (no correlations: these records are for load and smoke
tests, never for judging the model). IDs are strings ``syn-000001``, ``syn-000002``, … so they
cannot be confused with the data set's integer IDs. numpy only: the consumer image has neither
pandas nor scikit-learn.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import numpy as np

from creditstream.contract import FEATURE_SPECS, FEATURES, ID_FIELD

ID_PREFIX: Final = "syn-"
QUANTILE_LEVELS: Final = 101
SECTION_KIND: Final = "independent-marginals"
_CHUNK: Final = 1024


def synthetic_id(number: int) -> str:
    """The id of the number-th synthetic record (1-based): ``syn-000001``."""
    return f"{ID_PREFIX}{number:06d}"


def build_synthetic_section(features: np.ndarray) -> dict[str, Any]:
    """Model-card `synthetic` section from a [n, 23] array in FEATURES order.

    Whole-number (code) features keep their exact category frequencies; every feature also gets
    QUANTILE_LEVELS quantiles, which amounts are sampled from by linear interpolation.
    """
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != len(FEATURES):
        raise ValueError(f"expected [n, {len(FEATURES)}] features, got {array.shape}")
    levels = np.linspace(0.0, 1.0, QUANTILE_LEVELS)
    section: dict[str, Any] = {
        "kind": SECTION_KIND,
        "note": "SYNTHETIC: features drawn independently from these marginals; no correlations.",
        "id_format": f"{ID_PREFIX}NNNNNN (string, 1-based)",
        "rows": int(array.shape[0]),
        "quantile_levels": QUANTILE_LEVELS,
        "features": {},
    }
    for index, name in enumerate(FEATURES):
        column = array[:, index]
        entry: dict[str, Any] = {"quantiles": [float(q) for q in np.quantile(column, levels)]}
        if FEATURE_SPECS[name].integer:
            values, counts = np.unique(column, return_counts=True)
            entry["categories"] = {
                "values": [int(v) for v in values],
                "frequencies": [float(c) for c in counts / counts.sum()],
            }
        section["features"][name] = entry
    return section


class _FeatureSampler:
    def __init__(self, name: str, entry: dict[str, Any]) -> None:
        spec = FEATURE_SPECS[name]
        self.low, self.high = spec.minimum, spec.maximum
        categories = entry.get("categories")
        self.values: np.ndarray | None = None
        if categories:
            self.values = np.asarray(categories["values"], dtype=np.int64)
            frequencies = np.asarray(categories["frequencies"], dtype=np.float64)
            if len(self.values) != len(frequencies) or not len(self.values):
                raise ValueError(f"synthetic.features.{name}.categories is malformed")
            self.cumulative = np.cumsum(frequencies) / frequencies.sum()
        else:
            self.quantiles = np.asarray(entry["quantiles"], dtype=np.float64)
            if self.quantiles.ndim != 1 or len(self.quantiles) < 2:
                raise ValueError(f"synthetic.features.{name}.quantiles needs >= 2 values")
            self.levels = np.linspace(0.0, 1.0, len(self.quantiles))

    def draw(self, uniform: np.ndarray) -> np.ndarray:
        if self.values is not None:
            picks = np.searchsorted(self.cumulative, uniform, side="right")
            drawn = self.values[np.minimum(picks, len(self.values) - 1)].astype(np.float64)
        else:
            # NOTE: the data's amounts are whole NT dollars; keep synthetic ones whole too.
            drawn = np.rint(np.interp(uniform, self.levels, self.quantiles))
        return np.clip(drawn, self.low, self.high)


def iter_synthetic_records(
    card: dict[str, Any], n: int | None, seed: int
) -> Iterator[dict[str, Any]]:
    """Yield n (None: endless) SYNTHETIC records valid under `codec.validate_record`.

    `card` is the model card (or just its `synthetic` section). The stream depends only on the
    seed: the first k records are the same whatever n is.
    """
    section = card.get("synthetic", card)
    if section.get("kind") != SECTION_KIND:
        raise ValueError(f"model card has no {SECTION_KIND!r} synthetic section")
    samplers = [_FeatureSampler(name, section["features"][name]) for name in FEATURES]
    if n is not None and n < 0:
        raise ValueError("n must be >= 0 or None")
    rng = np.random.default_rng(seed)
    produced = 0
    while n is None or produced < n:
        uniform = rng.random((_CHUNK, len(FEATURES)))
        columns = [sampler.draw(uniform[:, i]) for i, sampler in enumerate(samplers)]
        block = np.stack(columns, axis=1).astype(np.int64).tolist()
        for row in block:
            if n is not None and produced >= n:
                return
            produced += 1
            record: dict[str, Any] = {ID_FIELD: synthetic_id(produced)}
            record.update(zip(FEATURES, row, strict=True))
            yield record
