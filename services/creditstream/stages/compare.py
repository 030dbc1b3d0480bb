"""`creditstream results compare`: champion vs shadow agreement from the results store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import MetaData, create_engine, select

from creditstream.contract import ID_FIELD, LABEL_FIELD
from creditstream.stages.topology import SHADOW_VERSION_PREFIX
from creditstream.store import predictions_table

if TYPE_CHECKING:
    from creditstream.settings import Settings


@dataclass(frozen=True)
class ModelSide:
    """One model's figures over the records both models scored."""

    version: str
    rows: int
    auc: float | None
    positive_rate: float


@dataclass(frozen=True)
class Comparison:
    """Champion vs shadow over the records both scored."""

    champion: ModelSide
    shadow: ModelSide
    common_records: int
    labelled_records: int
    differing_decisions: int
    mean_abs_diff: float

    @property
    def differing_rate(self) -> float:
        """Share of common records whose decision (is_default) differs."""
        return self.differing_decisions / self.common_records if self.common_records else 0.0

    def lines(self) -> list[str]:
        """The printed report."""

        def auc(side: ModelSide) -> str:
            return f"{side.auc:.4f}" if side.auc is not None else "n/a (no labels)"

        return [
            f"champion {self.champion.version}: {self.champion.rows} rows, "
            f"AUC {auc(self.champion)}, positive rate {self.champion.positive_rate:.4f}",
            f"shadow   {self.shadow.version}: {self.shadow.rows} rows, "
            f"AUC {auc(self.shadow)}, positive rate {self.shadow.positive_rate:.4f}",
            f"requests scored by both: {self.common_records} ({self.labelled_records} with labels)",
            f"differing decisions: {self.differing_decisions} "
            f"({self.differing_rate:.2%}); mean |p_champion - p_shadow| {self.mean_abs_diff:.6f}",
            "(each model decides at the threshold it was served with: the champion card's, "
            "or CREDITSTREAM_THRESHOLD)",
        ]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum formula (ties averaged); None without both classes."""
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def read_labels(path: Path) -> dict[str, int]:
    """record id → label from a CSV holding the label column (the UCI file)."""
    from creditstream.stages.raw import raw_rows
    from creditstream.stages.transforms import coerce_raw

    labels: dict[str, int] = {}
    for row in raw_rows(path):
        if LABEL_FIELD not in row or ID_FIELD not in row:
            return {}
        try:
            label = int(float(row[LABEL_FIELD]))
        except ValueError:
            continue  # NOTE: an unreadable label: that record has no label
        # NOTE: the record id as the pipeline stores it (preprocess coerces "00123" to 123).
        labels[str(coerce_raw({ID_FIELD: row[ID_FIELD]})[ID_FIELD])] = label
    return labels


def _pair_key(version: str, request_id: str) -> str:
    """What pairs a shadow row with the champion's row of the same request.

    NOTE: the shadow's request id is the champion's + `|<shadow version>`; pairing by it (not
    by record id) keeps a record sent twice as two pairs.
    """
    suffix = f"|{version}"
    if version.startswith(SHADOW_VERSION_PREFIX) and request_id.endswith(suffix):
        return request_id[: -len(suffix)]
    return request_id


def _by_version(settings: Settings) -> dict[str, dict[str, tuple[float, bool, str]]]:
    url = settings.database_url.get_secret_value()
    engine = create_engine(url)
    schema = None if engine.dialect.name == "sqlite" else settings.database_schema
    table = predictions_table(MetaData(schema=schema))
    c = table.c
    out: dict[str, dict[str, tuple[float, bool, str]]] = {}
    try:
        with engine.connect() as conn:
            statement = select(
                c.model_version, c.request_id, c.record_id, c.probability, c.is_default
            )
            for version, request_id, record_id, p, is_default in conn.execute(statement):
                key = _pair_key(str(version), str(request_id))
                out.setdefault(str(version), {})[key] = (float(p), bool(is_default), str(record_id))
    finally:
        engine.dispose()
    return out


def _pick(versions: list[str], given: str | None, what: str) -> str:
    if given is not None:
        if given not in versions:
            raise ValueError(f"no rows of {what} model version {given!r} (have {versions})")
        return given
    if len(versions) != 1:
        raise ValueError(f"{len(versions)} {what} model versions {versions}: name one")
    return versions[0]


def compare(
    settings: Settings,
    *,
    labels: dict[str, int] | None = None,
    champion: str | None = None,
    shadow: str | None = None,
) -> Comparison:
    """Champion vs shadow over the records both scored (one row per record id each)."""
    rows = _by_version(settings)
    shadows = sorted(v for v in rows if v.startswith(SHADOW_VERSION_PREFIX))
    champions = sorted(v for v in rows if not v.startswith(SHADOW_VERSION_PREFIX))
    champion = _pick(champions, champion, "champion")
    shadow = _pick(shadows, shadow, "shadow")
    a, b = rows[champion], rows[shadow]
    common = sorted(set(a) & set(b))
    pa = np.array([a[r][0] for r in common])
    pb = np.array([b[r][0] for r in common])
    da = np.array([a[r][1] for r in common])
    db = np.array([b[r][1] for r in common])
    labels = labels or {}
    record_of = [a[r][2] for r in common]
    labelled = [i for i, r in enumerate(record_of) if r in labels]
    y = np.array([labels[record_of[i]] for i in labelled], dtype=np.int64)

    def side(version: str, p: np.ndarray, d: np.ndarray, n: int) -> ModelSide:
        auc = roc_auc(y, p[labelled]) if labelled else None
        return ModelSide(version, n, auc, float(d.mean()) if len(d) else 0.0)

    return Comparison(
        champion=side(champion, pa, da, len(a)),
        shadow=side(shadow, pb, db, len(b)),
        common_records=len(common),
        labelled_records=len(labelled),
        differing_decisions=int((da != db).sum()),
        mean_abs_diff=float(np.abs(pa - pb).mean()) if common else 0.0,
    )


def as_dict(result: Comparison) -> dict[str, Any]:
    """JSON-friendly figures (for --json)."""
    return {
        "champion": result.champion.__dict__,
        "shadow": result.shadow.__dict__,
        "common_records": result.common_records,
        "labelled_records": result.labelled_records,
        "differing_decisions": result.differing_decisions,
        "differing_rate": result.differing_rate,
        "mean_abs_diff": result.mean_abs_diff,
    }
