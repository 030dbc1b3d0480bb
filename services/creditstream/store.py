"""Results store (SQLAlchemy Core): batched, idempotent writes of predictions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite

if TYPE_CHECKING:
    from creditstream.batcher import Prediction
    from creditstream.settings import Settings


def predictions_table(metadata: MetaData) -> Table:
    """The `predictions` table: one row per scored record, keyed by request_id."""
    return Table(
        "predictions",
        metadata,
        Column(
            "request_id",
            String(300),
            primary_key=True,
            comment="message_id, or message_id/index for multi-record messages",
        ),
        Column("message_id", String(200), nullable=False, index=True),
        Column("record_id", String(128), nullable=False, index=True),
        Column("probability", Float(precision=53), nullable=False),
        Column("is_default", Boolean, nullable=False),
        Column("threshold", Float(precision=53), nullable=False),
        Column("model_version", String(100), nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False),
        Column("scored_at", DateTime(timezone=True), nullable=False),
        Column(
            "stored_at",
            DateTime(timezone=True),
            nullable=False,
            server_default=func.current_timestamp(),
        ),
    )


def _utc(epoch_seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch_seconds, tz=dt.UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # NOTE: WAL lets readers (demo dashboard, tests) look while the consumer writes;
    # synchronous=FULL keeps "ack only after durable" true even across a power cut.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class ResultsStore:
    """Writes predictions once per request_id; a redelivered message adds no row."""

    def __init__(self, engine: Engine, schema: str | None = None) -> None:
        self.engine = engine
        self.metadata = MetaData(schema=schema)
        self.table = predictions_table(self.metadata)
        self._is_sqlite = engine.dialect.name == "sqlite"
        self._schema_ready = False
        if engine.dialect.name not in {"sqlite", "postgresql"}:
            raise ValueError(
                f"unsupported results database {engine.dialect.name!r}: "
                "use sqlite:/// or postgresql+psycopg://"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> ResultsStore:
        """Engine from CREDITSTREAM_DATABASE_URL (pool pre-ping: survives DB restarts)."""
        url = settings.database_url.get_secret_value()
        engine = create_engine(url, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        return cls(engine, settings.database_schema)

    def create_schema(self) -> None:
        """Create the table (and schema) if missing; safe to call from many consumers."""
        with self.engine.begin() as conn:
            if self.metadata.schema and not self._is_sqlite:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.metadata.schema}"'))
        # NOTE: concurrent consumers may race on CREATE TABLE; checkfirst + retry on conflict.
        try:
            self.metadata.create_all(self.engine, checkfirst=True)
        except Exception:  # noqa: BLE001 - another consumer created it between check and create
            self.metadata.create_all(self.engine, checkfirst=True)
        self._schema_ready = True

    def write(self, predictions: Iterable[Prediction]) -> set[str]:
        """Insert in one transaction; returns the request_ids that were new (others existed)."""
        rows = [
            {
                "request_id": p.request_id,
                "message_id": p.message_id,
                "record_id": str(p.record_id),
                "probability": p.probability,
                "is_default": p.is_default,
                "threshold": p.threshold,
                "model_version": p.model_version,
                "received_at": _utc(p.received_at),
                "scored_at": _utc(p.scored_at),
            }
            for p in predictions
        ]
        if not rows:
            return set()
        if not self._schema_ready:
            self.create_schema()  # NOTE: the database may have been down at start-up
        dialect_insert = sqlite.insert if self._is_sqlite else postgresql.insert
        statement = (
            dialect_insert(self.table)
            .on_conflict_do_nothing(index_elements=["request_id"])
            .returning(self.table.c.request_id)
        )
        with self.engine.begin() as conn:
            inserted = conn.execute(statement, rows).scalars().all()
        return set(inserted)

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(select(1))

    def count(self) -> int:
        """Number of stored predictions."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self.table)).scalar_one())

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()
