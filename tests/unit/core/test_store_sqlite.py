"""Results store on SQLite: batched, idempotent writes (PostgreSQL is covered in integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from creditstream.batcher import Prediction
from creditstream.settings import Settings
from creditstream.store import ResultsStore

pytestmark = pytest.mark.unit


def prediction(request_id: str, probability: float = 0.4) -> Prediction:
    return Prediction(
        request_id,
        request_id.split("/")[0],
        1,
        probability,
        probability >= 0.5,
        0.5,
        "v1",
        received_at=1_700_000_000.0,
        scored_at=1_700_000_000.5,
    )


def test_redelivered_predictions_add_no_rows(tmp_path: Path) -> None:
    store = ResultsStore.from_settings(Settings(database_url=f"sqlite:///{tmp_path}/r.db"))
    store.create_schema()
    assert store.write([prediction("a"), prediction("b/0"), prediction("b/1")]) == 3
    assert store.write([prediction("b/1", 0.9), prediction("c")]) == 1
    assert store.count() == 4
    assert store.write([]) == 0


def test_schema_is_created_lazily_on_first_write(tmp_path: Path) -> None:
    store = ResultsStore.from_settings(Settings(database_url=f"sqlite:///{tmp_path}/lazy.db"))
    assert store.write([prediction("x")]) == 1
    assert store.count() == 1
