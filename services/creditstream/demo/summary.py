"""The demo's closing numbers: what the results store holds, latency, and AUC against labels."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np


def sqlite_path(database_url: str) -> Path:
    """The file of a sqlite:///path URL."""
    prefix = "sqlite:///"
    if not database_url.startswith(prefix):
        raise ValueError(f"the demo writes predictions to SQLite, got {database_url.split(':')[0]}")
    return Path(database_url[len(prefix) :])


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    negatives = int(len(y) - positives)
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs both classes")
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    start = 0
    while start < len(s):
        end = start
        while end + 1 < len(s) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


@dataclass(frozen=True)
class StoreCounts:
    """Rows in the predictions table."""

    rows: int
    distinct_requests: int
    distinct_records: int


class PredictionsReader:
    """Read-only look at the consumers' SQLite results store (WAL lets us read while they write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection | None:
        if self._connection is None:
            if not self.path.exists():
                return None
            self._connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        return self._connection

    def _table_exists(self, db: sqlite3.Connection) -> bool:
        row = db.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='predictions'"
        ).fetchone()
        return bool(row and row[0])

    def count(self) -> int:
        """Rows stored so far (0 before the first consumer created the table)."""
        db = self._db()
        if db is None or not self._table_exists(db):
            return 0
        return int(db.execute("SELECT count(*) FROM predictions").fetchone()[0])

    def counts(self) -> StoreCounts:
        """Rows, distinct request ids and distinct record ids."""
        db = self._db()
        if db is None or not self._table_exists(db):
            return StoreCounts(0, 0, 0)
        rows, requests, records = db.execute(
            "SELECT count(*), count(DISTINCT request_id), count(DISTINCT record_id) "
            "FROM predictions"
        ).fetchone()
        return StoreCounts(int(rows), int(requests), int(records))

    def processing_latencies_ms(self) -> np.ndarray:
        """received_at -> scored_at per record, ms (the consumer's own share of the latency).

        NOTE: stored_at is the database's CURRENT_TIMESTAMP, whole seconds on SQLite.
        """
        db = self._db()
        if db is None or not self._table_exists(db):
            return np.array([])
        values = [
            (_parse_time(scored) - _parse_time(received)).total_seconds() * 1000
            for received, scored in db.execute("SELECT received_at, scored_at FROM predictions")
        ]
        return np.asarray(values, dtype=np.float64)

    def probabilities_by_record(self) -> dict[str, float]:
        """One probability per record id (repeated records score the same)."""
        db = self._db()
        if db is None or not self._table_exists(db):
            return {}
        return {
            str(record): float(p)
            for record, p in db.execute("SELECT record_id, probability FROM predictions")
        }

    def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def auc_against_labels(
    probabilities: Mapping[str, float], labels: Mapping[str, int]
) -> tuple[float, int] | None:
    """(AUC, records used) over the record ids that have both a prediction and a label."""
    common = [record for record in probabilities if record in labels]
    if not common:
        return None
    y = [labels[record] for record in common]
    if len(set(y)) < 2:
        return None
    return roc_auc(y, [probabilities[record] for record in common]), len(common)


def labels_from_dataset(path: Path) -> dict[str, int]:
    """record id -> label of the UCI data set (ids as the producer sends them)."""
    from creditstream.contract import ID_FIELD, LABEL_FIELD
    from creditstream.data.dataset import load_dataset

    frame = load_dataset(path)
    return {
        str(int(i)) if float(i).is_integer() else str(i): int(label)
        for i, label in zip(frame[ID_FIELD], frame[LABEL_FIELD], strict=True)
    }
