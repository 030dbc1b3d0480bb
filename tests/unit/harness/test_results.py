"""The results reader on what the real results store wrote (SQLite; PostgreSQL in integration)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from creditstream.batcher import Prediction
from creditstream.harness.results import ResultsReader, StoreSummary
from creditstream.settings import Settings
from creditstream.store import ResultsStore

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

T0 = 1_700_000_000.0


def prediction(request_id: str, record_id: str, received: float, scored: float) -> Prediction:
    return Prediction(
        request_id, request_id, record_id, 0.25, False, 0.5, "v1", T0 + received, T0 + scored
    )


def test_reads_what_the_store_wrote(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'results.db'}")
    reader = ResultsReader(settings)
    assert (reader.count(), reader.summary()) == (0, StoreSummary())  # before the file exists
    assert not (tmp_path / "results.db").exists(), "a reader must not create the store"
    store = ResultsStore.from_settings(settings)
    store.write(
        [
            prediction("a", "1", received=0.0, scored=0.010),
            prediction("b", "1", received=1.0, scored=1.050),
            prediction("c", "2", received=2.0, scored=2.002),
        ]
    )
    assert reader.count() == 3
    assert reader.summary() == StoreSummary(
        rows=3,
        distinct_requests=3,
        distinct_records=2,
        first_received=pytest.approx(T0, abs=1e-5),
        last_scored=pytest.approx(T0 + 2.002, abs=1e-5),
    )
    assert sorted(row.request_id for row in reader.rows()) == ["a", "b", "c"]
    assert reader.probabilities_by_record() == {"1": 0.25, "2": 0.25}
    assert sorted(np.round(reader.processing_latencies_ms(), 3)) == [2.0, 10.0, 50.0]
    reader.close()
    store.dispose()


def test_reads_nothing_before_the_table_exists(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()
    with ResultsReader(Settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}")) as reader:
        assert (reader.count(), reader.rows(), reader.summary()) == (0, [], StoreSummary())


@pytest.mark.parametrize(
    "folder",
    [
        pytest.param("C#", id="hash"),
        pytest.param("why?", id="question-mark"),
        pytest.param("100%41", id="percent"),
        pytest.param("two words", id="space"),
    ],
)
def test_reads_a_store_whose_path_has_uri_characters(folder: str, tmp_path: Path) -> None:
    # NOTE: the read-only open goes through an SQLite URI, where `?`, `#` and `%` mean something.
    path = tmp_path / folder / "results.db"
    path.parent.mkdir()
    settings = Settings(database_url=f"sqlite:///{urllib.parse.quote(str(path))}")
    store = ResultsStore.from_settings(settings)
    try:
        store.write([prediction("a", "1", received=0.0, scored=0.010)])
        with ResultsReader(settings) as reader:
            assert reader.count() == 1
    finally:
        store.dispose()
