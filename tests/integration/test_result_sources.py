"""Synthetic and smoke-test results are told apart from live ones by a `source` column that the
queries filter on (issue 15), on the real broker and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy import create_engine, text

from creditstream.client import run_smoke_test
from creditstream.harness.results import ResultsReader
from creditstream.producer import run_producer
from creditstream.settings import Settings
from creditstream.store import ResultsStore
from tests.helpers import PG_URL, wait_until
from tests.integration.test_bad_input_and_rpc import good, running_consumer
from tests.integration.test_hostile_input import publish_raw

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_synthetic_and_smoke_test_rows_carry_their_source(
    make_settings: Callable[..., Settings], pg_schema: str
) -> None:
    settings = make_settings(database_url=PG_URL, database_schema=pg_schema)
    with running_consumer(settings):
        publish_raw(settings, json.dumps(good("live-1")).encode(), message_id="live-1")
        report = run_producer(settings, synthetic=True, limit=3, progress=False)
        assert report.complete
        assert run_smoke_test(settings, timeout=30) == 0
        with ResultsReader(settings) as reader:
            wait_until(lambda: reader.count() >= 5, timeout=30, message="5 rows")
    engine = create_engine(PG_URL)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(f'SELECT source, count(*) FROM "{pg_schema}".predictions GROUP BY source')
            ).all()
    finally:
        engine.dispose()
    assert dict(rows) == {"live": 1, "synthetic": 3, "smoke-test": 1}
    with ResultsReader(settings) as reader:
        assert reader.count(source="live") == 1
        assert [row.record_id for row in reader.rows(source="live")] == ["live-1"]
        assert reader.count() == 5


@pytest.mark.timeout(60)
def test_a_table_from_before_the_source_column_is_migrated(pg_schema: str) -> None:
    engine = create_engine(PG_URL)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    f'CREATE TABLE "{pg_schema}".predictions (request_id varchar(300) PRIMARY KEY, '
                    "message_id varchar(200) NOT NULL, record_id varchar(128) NOT NULL, "
                    "probability float NOT NULL, is_default boolean NOT NULL, "
                    "threshold float NOT NULL, model_version varchar(100) NOT NULL, "
                    "received_at timestamptz NOT NULL, scored_at timestamptz NOT NULL, "
                    "stored_at timestamptz NOT NULL DEFAULT now())"
                )
            )
            conn.execute(
                text(
                    f'INSERT INTO "{pg_schema}".predictions VALUES '
                    "('old', 'old', '1', 0.5, true, 0.5, 'v0', now(), now(), now())"
                )
            )
        store = ResultsStore(engine, pg_schema)
        store.create_schema()
        store.create_schema()  # twice: a second consumer starting
        with engine.connect() as conn:
            sources = conn.execute(text(f'SELECT source FROM "{pg_schema}".predictions')).all()
    finally:
        engine.dispose()
    assert sources == [("live",)]
