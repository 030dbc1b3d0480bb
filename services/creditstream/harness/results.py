"""The one reader of the predictions table, for the demo, the benchmark and the tests.

It reads through the store's own Table object (creditstream/store.py), so the schema, the
table name and the column types come from one place, on SQLite and PostgreSQL alike. SQLite
is opened read-only (WAL lets it read while the consumers write) and never created.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np
from sqlalchemy import Engine, MetaData, create_engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from creditstream.store import predictions_table

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from creditstream.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoredPrediction(NamedTuple):
    """One stored row, as the tests compare it."""

    request_id: str
    record_id: str
    probability: float


@dataclass(frozen=True)
class StoreSummary:
    """Rows, distinct ids, first receive and last score (epoch seconds; None while empty)."""

    rows: int = 0
    distinct_requests: int = 0
    distinct_records: int = 0
    first_received: float | None = None
    last_scored: float | None = None


def _epoch(value: dt.datetime) -> float:
    # NOTE: SQLite hands back naive datetimes; the store writes them in UTC.
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()


class ResultsReader:
    """Read-only look at one Settings' results store; 0 / empty before the table exists.

    A database that cannot be read right now (not created yet, or down during a fault test)
    reads as empty rather than raising: the callers poll until what they wait for appears.
    """

    def __init__(self, settings: Settings) -> None:
        url = make_url(settings.database_url.get_secret_value())
        self._sqlite_file: Path | None = None
        schema = settings.database_schema
        if url.get_backend_name() == "sqlite":
            self._sqlite_file = Path(url.database or "")
            schema = None
        self.table = predictions_table(MetaData(schema=schema))
        self._url = url
        self._engine: Engine | None = None

    def _connect_engine(self) -> Engine | None:
        if self._engine is None:
            path = self._sqlite_file
            if path is None:
                self._engine = create_engine(self._url, pool_pre_ping=True)
            elif path.is_file():
                # NOTE: an SQLite URI: `?`, `#` and `%` in the path must be percent-encoded.
                uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
                self._engine = create_engine(
                    "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=5)
                )
        return self._engine

    def _read(self, query: Callable[[Connection], T], empty: T) -> T:
        engine = self._connect_engine()
        if engine is None:
            return empty
        try:
            with engine.connect() as conn:
                return query(conn)
        except DBAPIError as exc:  # no table yet, or the database is away for a moment
            log.debug("results store not readable: %s", exc)
            return empty

    def count(self, source: str | None = None) -> int:
        """Rows stored so far (of one source: live, synthetic, smoke-test; None: all)."""
        statement = select(func.count()).select_from(self.table)
        if source is not None:
            statement = statement.where(self.table.c.source == source)
        return self._read(lambda conn: int(conn.execute(statement).scalar_one()), 0)

    def rows(self, source: str | None = None) -> list[StoredPrediction]:
        """Every stored prediction (request id, record id, probability), of one source or all."""
        c = self.table.c
        statement = select(c.request_id, c.record_id, c.probability)
        if source is not None:
            statement = statement.where(c.source == source)
        return self._read(
            lambda conn: [
                StoredPrediction(str(r), str(i), float(p)) for r, i, p in conn.execute(statement)
            ],
            [],
        )

    def summary(self) -> StoreSummary:
        """Rows, distinct request and record ids, min(received_at) and max(scored_at)."""
        c = self.table.c
        statement = select(
            func.count(),
            func.count(c.request_id.distinct()),
            func.count(c.record_id.distinct()),
            func.min(c.received_at),
            func.max(c.scored_at),
        )

        def query(conn: Connection) -> StoreSummary:
            rows, requests, records, low, high = conn.execute(statement).one()
            if not rows:
                return StoreSummary()
            return StoreSummary(int(rows), int(requests), int(records), _epoch(low), _epoch(high))

        return self._read(query, StoreSummary())

    def processing_latencies_ms(self) -> np.ndarray:
        """received_at -> scored_at per record, ms (the consumer's own share of the latency)."""
        c = self.table.c
        statement = select(c.received_at, c.scored_at)
        values: list[float] = self._read(
            lambda conn: [
                (scored - received).total_seconds() * 1000
                for received, scored in conn.execute(statement)
            ],
            [],
        )
        return np.asarray(values, dtype=np.float64)

    def scored_at_by_message(self) -> dict[str, float]:
        """message_id -> latest scored_at (epoch s) of its stored records.

        NOTE: scored_at is stamped on the row just before the batch's transaction commits, so
        it is when the record became durable, give or take that commit.
        """
        c = self.table.c
        statement = select(c.message_id, func.max(c.scored_at)).group_by(c.message_id)
        return self._read(
            lambda conn: {str(m): _epoch(at) for m, at in conn.execute(statement)}, {}
        )

    def probabilities_by_record(self) -> dict[str, float]:
        """One probability per record id (repeated records score the same)."""
        return {row.record_id: row.probability for row in self.rows()}

    def close(self) -> None:
        """Close pooled connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> ResultsReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
