"""Results store (SQLAlchemy Core): batched, idempotent writes of predictions."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
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
    inspect,
    select,
    text,
)
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    StatementError,
)

from creditstream.settlement import StoreErrorKind

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
        # NOTE: 255: an AMQP message_id is a short string (at most 255 bytes, so at most 255
        # characters); a table created with the former 200 keeps it, and a longer id is then
        # dead-lettered as store-rejected rather than stopping the consumer.
        Column("message_id", String(255), nullable=False, index=True),
        Column("record_id", String(128), nullable=False, index=True),
        Column("probability", Float(precision=53), nullable=False),
        Column("is_default", Boolean, nullable=False),
        Column("threshold", Float(precision=53), nullable=False),
        Column("model_version", String(100), nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False),
        Column("scored_at", DateTime(timezone=True), nullable=False),
        Column(
            "source",
            String(16),
            nullable=False,
            server_default="live",
            comment="live, synthetic (generated records) or smoke-test: queries of live results "
            "filter on it",
        ),
        Column(
            "stored_at",
            DateTime(timezone=True),
            nullable=False,
            server_default=func.current_timestamp(),
        ),
    )


# SQLSTATE undefined_table, invalid_schema_name; SQLite says "no such table" (OperationalError).
_MISSING_RELATION = frozenset({"42P01", "3F000"})


def classify_store_error(exc: BaseException) -> StoreErrorKind:
    """Transient (the database is away, slow or busy: retry) or permanent (this data never fits).

    Permanent: DataError (value too long, NUL in text, bad encoding), IntegrityError, and a
    value the driver cannot even encode (UnicodeError). Everything else is transient:
    OperationalError (connection, timeout, serialization failure, deadlock), InterfaceError, a
    missing table, and a TypeError (a bug to see, not a record to dead-letter).
    """
    if isinstance(exc, DataError | IntegrityError):
        return StoreErrorKind.PERMANENT
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        exc = exc.orig if isinstance(exc.orig, BaseException) else exc
    if isinstance(exc, UnicodeError):
        return StoreErrorKind.PERMANENT
    return StoreErrorKind.TRANSIENT


def store_error_detail(exc: BaseException) -> str:
    """The first line of the database's (or driver's) message, without the SQL."""
    orig = getattr(exc, "orig", None)
    text_ = str(orig if orig is not None else exc).strip()
    return (text_.splitlines()[0] if text_ else type(exc).__name__)[:300]


def _utc(epoch_seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch_seconds, tz=dt.UTC)


def _sqlite_time(epoch_seconds: float) -> str:
    # NOTE: the text layout SQLAlchemy's SQLite DateTime type reads back (UTC).
    return (
        dt.datetime.fromtimestamp(epoch_seconds, tz=dt.UTC)
        .replace(tzinfo=None)
        .isoformat(sep=" ", timespec="microseconds")
    )


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
        marker = "?" if self._is_sqlite else "%s"
        qualified = f'"{schema}".predictions' if schema and not self._is_sqlite else "predictions"
        self._qualified = qualified
        self._insert_sql = (
            f"INSERT INTO {qualified} (request_id, message_id, record_id, probability, "
            "is_default, threshold, model_version, received_at, scored_at, source) "
            f"VALUES ({', '.join([marker] * 10)}) ON CONFLICT (request_id) DO NOTHING"
        )
        if engine.dialect.name not in {"sqlite", "postgresql"}:
            raise ValueError(
                f"unsupported results database {engine.dialect.name!r}: "
                "use sqlite:/// or postgresql+psycopg://"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> ResultsStore:
        """Engine from CREDITSTREAM_DATABASE_URL (pool pre-ping: survives DB restarts)."""
        url = settings.database_url.get_secret_value()
        connect_args: dict[str, Any] = {}
        if url.startswith("postgresql"):
            # NOTE: bounded waits: a database that does not answer is a transient store error
            # (batch held, readiness red), never a consumer stuck in a call.
            statement_ms = int(settings.database_statement_timeout_s * 1000)
            connect_args = {
                "connect_timeout": settings.database_connect_timeout_s,
                "options": f"-c statement_timeout={statement_ms}",
                # NOTE: a partition mid-write (no RST, no answer) is noticed by TCP keepalives
                # and tcp_user_timeout instead of a recv blocked for the kernel's ~2 h default.
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                "tcp_user_timeout": int(settings.database_statement_timeout_s * 1000) + 5000,
            }
        else:
            connect_args = {"timeout": settings.database_connect_timeout_s}
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_timeout=settings.database_connect_timeout_s,
            connect_args=connect_args,
        )
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        return cls(engine, settings.database_schema)

    def create_schema(self) -> None:
        """Create the table (and schema) if missing; safe to call from many consumers."""
        with self.engine.begin() as conn:
            # NOTE: only when missing: CREATE SCHEMA needs CREATE on the database, which a
            # least-privilege role (creditstream.accounts) does not have even with IF NOT EXISTS.
            if (
                self.metadata.schema
                and not self._is_sqlite
                and not inspect(conn).has_schema(self.metadata.schema)
            ):
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.metadata.schema}"'))
        # NOTE: concurrent consumers may race on CREATE TABLE; checkfirst + retry on conflict.
        try:
            self.metadata.create_all(self.engine, checkfirst=True)
        except Exception:  # noqa: BLE001 - another consumer created it between check and create
            self.metadata.create_all(self.engine, checkfirst=True)
        self._add_source_column()
        self._schema_ready = True

    def _add_source_column(self) -> None:
        """Migration: a table created before the `source` column gets it (old rows: live)."""
        with self.engine.begin() as conn:
            columns = {
                c["name"] for c in inspect(conn).get_columns("predictions", self.table.schema)
            }
            if "source" not in columns:
                # NOTE: IF NOT EXISTS: consumers starting together may race (SQLite lacks it).
                guard = "" if self._is_sqlite else "IF NOT EXISTS "
                conn.execute(
                    text(
                        f"ALTER TABLE {self._qualified} ADD COLUMN {guard}source VARCHAR(16) "
                        "NOT NULL DEFAULT 'live'"
                    )
                )

    def write(self, predictions: Sequence[Prediction]) -> int:
        """Insert in one transaction, skipping request_ids already stored; returns rows added.

        NOTE: this is the consumer's hot path. Rows go to the DBAPI's executemany as plain
        tuples (SQLAlchemy's per-row parameter processing cost more than scoring them).
        """
        if not predictions:
            return 0
        if not self._schema_ready:
            self.create_schema()  # NOTE: the database may have been down at start-up
        # NOTE: one conversion per distinct timestamp (per message / per batch), not per row.
        convert = _sqlite_time if self._is_sqlite else _utc
        received: dict[float, str | dt.datetime] = {
            t: convert(t) for t in {p.received_at for p in predictions}
        }
        scored: dict[float, str | dt.datetime] = {
            t: convert(t) for t in {p.scored_at for p in predictions}
        }
        rows = [
            (
                p.request_id,
                p.message_id,
                str(p.record_id),
                p.probability,
                p.is_default,
                p.threshold,
                p.model_version,
                received[p.received_at],
                scored[p.scored_at],
                p.source,
            )
            for p in predictions
        ]
        try:
            with self.engine.begin() as conn:
                result = conn.exec_driver_sql(self._insert_sql, rows)
                return int(result.rowcount)
        except (ProgrammingError, OperationalError) as exc:
            # NOTE: the table (or schema) went away (a restore, a reset): create it again on
            # the next try instead of failing the same way for ever.
            if getattr(exc.orig, "sqlstate", None) in _MISSING_RELATION or (
                self._is_sqlite and "no such table" in str(exc.orig)
            ):
                self._schema_ready = False
            raise

    def probe(self) -> None:
        """Insert an ordinary row and roll it back: raises as write() would if the database
        refuses rows in general (a constraint, a trigger), not just the ones it was given."""
        convert = _sqlite_time if self._is_sqlite else _utc
        now = convert(time.time())
        row = (
            "creditstream-probe",
            "creditstream-probe",
            "1",
            0.5,
            False,
            0.5,
            "probe",
            now,
            now,
            "live",
        )
        if not self._schema_ready:
            self.create_schema()
        with self.engine.connect() as conn:
            transaction = conn.begin()
            try:
                conn.exec_driver_sql(self._insert_sql, [row])
            finally:
                transaction.rollback()

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
