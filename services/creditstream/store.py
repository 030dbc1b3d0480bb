"""Results store (SQLAlchemy Core): batched, idempotent writes of predictions.

Durable first, events after: the prediction events of a batch go into the `outbox` table in the
same transaction as its rows, so a committed batch can be acked at once; the outbox relay
(creditstream/outbox.py) publishes them to the broker later, however long that takes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
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


def outbox_table(metadata: MetaData) -> Table:
    """The `outbox` table: prediction events committed with their rows, not yet published."""
    return Table(
        "outbox",
        metadata,
        # NOTE: SQLite only auto-increments an INTEGER PRIMARY KEY (not BIGINT).
        Column(
            "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        Column("message_id", String(100), nullable=False, comment="stable across republishes"),
        Column("body", LargeBinary, nullable=False, comment="the message body"),
        Column("records", Integer, nullable=False),
        Column("model_version", String(100), nullable=False),
        Column(
            "destination",
            Text,
            nullable=True,
            comment="NULL: the predictions exchange; else JSON {exchange, routing_key, "
            "message_id, headers} (dead letters), ASCII-escaped",
        ),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column(
            "created_at",
            DateTime(timezone=True),
            nullable=False,
            server_default=func.current_timestamp(),
        ),
    )


@dataclass(frozen=True)
class OutboxEvent:
    """One message to publish after the commit: a prediction event (for the predictions
    exchange) or, with `destination`, a dead letter (exchange, routing key, message id and
    headers of its own)."""

    message_id: str
    body: bytes
    records: int
    model_version: str
    destination: dict[str, Any] | None = None


@dataclass(frozen=True)
class OutboxRow:
    """An outbox row read back by the relay."""

    id: int
    event: OutboxEvent
    attempts: int


@dataclass
class OutboxBatch:
    """Rows handed to the relay; it marks which were published (deleted) and which failed."""

    rows: list[OutboxRow]
    published: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


class _PartlyStored(Exception):
    """Some rows of the batch were stored before: redo the write knowing which."""


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


def _outbox_values(event: OutboxEvent) -> dict[str, Any]:
    return {
        "message_id": event.message_id,
        "body": event.body,
        "records": event.records,
        "model_version": event.model_version,
        # NOTE: JSON with ASCII escapes: PostgreSQL text refuses NUL, and a message id or a
        # detail may carry one (or a lone surrogate).
        "destination": None
        if event.destination is None
        else json.dumps(event.destination, default=_json_default),
    }


def _json_default(value: Any) -> str:
    # NOTE: total: a header or id pika handed over as bytes (not UTF-8) must not stop a commit.
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _outbox_rows(result: Any) -> list[OutboxRow]:
    return [
        OutboxRow(
            id=int(row.id),
            event=OutboxEvent(
                message_id=row.message_id,
                body=bytes(row.body),
                records=int(row.records),
                model_version=row.model_version,
                destination=None if row.destination is None else json.loads(row.destination),
            ),
            attempts=int(row.attempts),
        )
        for row in result
    ]


def _iso(value: dt.datetime) -> str:
    # NOTE: SQLite hands back naive datetimes; the store writes them in UTC.
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat()


class ResultsStore:
    """Writes predictions once per request_id; a redelivered message adds no row."""

    def __init__(self, engine: Engine, schema: str | None = None) -> None:
        self.engine = engine
        self.metadata = MetaData(schema=schema)
        self.table = predictions_table(self.metadata)
        self.outbox = outbox_table(self.metadata)
        self._is_sqlite = engine.dialect.name == "sqlite"
        self._schema_ready = False
        marker = "?" if self._is_sqlite else "%s"
        qualified = f'"{schema}".predictions' if schema and not self._is_sqlite else "predictions"
        self._insert_sql = (
            f"INSERT INTO {qualified} (request_id, message_id, record_id, probability, "
            "is_default, threshold, model_version, received_at, scored_at) "
            f"VALUES ({', '.join([marker] * 9)}) ON CONFLICT (request_id) DO NOTHING"
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
            if self.metadata.schema and not self._is_sqlite:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.metadata.schema}"'))
        # NOTE: concurrent consumers may race on CREATE TABLE; checkfirst + retry on conflict.
        try:
            self.metadata.create_all(self.engine, checkfirst=True)
        except Exception:  # noqa: BLE001 - another consumer created it between check and create
            self.metadata.create_all(self.engine, checkfirst=True)
        self._schema_ready = True

    def write(
        self,
        predictions: Sequence[Prediction],
        event_of: Callable[[Sequence[Prediction]], OutboxEvent] | None = None,
    ) -> int:
        """Insert in one transaction, skipping request_ids already stored; returns rows added.

        With `event_of`, the event of the rows this call added (none when all were stored
        before: their event was written with them) goes into the outbox in the same
        transaction.

        NOTE: this is the consumer's hot path. Rows go to the DBAPI's executemany as plain
        tuples (SQLAlchemy's per-row parameter processing cost more than scoring them).
        """
        if not predictions:
            return 0
        try:
            return self._write(predictions, event_of, known=None)
        except _PartlyStored:
            # NOTE: rare (a redelivered or republished message next to new ones): the first
            # transaction was rolled back; look up which rows exist, then write the others.
            with self.engine.connect() as conn:
                known = self._existing({p.request_id for p in predictions}, conn)
            return self._write(predictions, event_of, known=known)

    def _existing(self, request_ids: set[str], conn: Any) -> set[str]:
        found: set[str] = set()
        ids = sorted(request_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = select(self.table.c.request_id).where(self.table.c.request_id.in_(chunk))
            found.update(conn.execute(query).scalars())
        return found

    def _write(
        self,
        predictions: Sequence[Prediction],
        event_of: Callable[[Sequence[Prediction]], OutboxEvent] | None,
        known: set[str] | None,
    ) -> int:
        if known:
            predictions = [p for p in predictions if p.request_id not in known]
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
            )
            for p in predictions
        ]
        try:
            with self.engine.begin() as conn:
                inserted = int(conn.exec_driver_sql(self._insert_sql, rows).rowcount)
                if event_of is None:
                    return inserted
                if 0 < inserted < len(predictions) and known is None:
                    raise _PartlyStored
                # NOTE: with `known`, a concurrent writer may have stored some meanwhile: their
                # event may then go out twice (events are at-least-once), never not at all.
                if inserted:
                    conn.execute(self.outbox.insert().values(_outbox_values(event_of(predictions))))
                return inserted
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
        row = ("creditstream-probe", "creditstream-probe", "1", 0.5, False, 0.5, "probe", now, now)
        if not self._schema_ready:
            self.create_schema()
        with self.engine.connect() as conn:
            transaction = conn.begin()
            try:
                conn.exec_driver_sql(self._insert_sql, [row])
            finally:
                transaction.rollback()

    # --- the outbox, for the relay ---------------------------------------------------------
    @contextlib.contextmanager
    def outbox_batch(self, limit: int, max_bytes: int | None = None) -> Iterator[OutboxBatch]:
        """The oldest unpublished events, claimed for the time of the block.

        PostgreSQL: the rows stay locked (`FOR UPDATE SKIP LOCKED`) until the block ends, so
        relays in other consumers take other rows; a relay that dies (SIGKILL) loses its
        session and its locks, and another relay takes the rows over. SQLite: one writer per
        file, so the rows are read without a lock (holding SQLite's write lock while the
        broker blocks the relay would stop the consumer's commits); two relays on one file
        may publish an event twice. Rows marked published are deleted at the end of the block,
        failed ones count an attempt; an exception leaves every row as it was.
        """
        if not self._schema_ready:
            self.create_schema()
        c = self.outbox.c
        query = (
            select(
                c.id, c.message_id, c.body, c.records, c.model_version, c.destination, c.attempts
            )
            # NOTE: rows deferred (their destination refused a message) sort behind fresh ones
            .order_by(c.attempts, c.id)
            .limit(limit)
        )
        if max_bytes is not None:
            # NOTE: bounded by bytes too (a whole-body dead letter may be large): look at the
            # sizes first, then load only the rows that fit (always at least one).
            sizes = select(c.id, func.length(c.body)).order_by(c.attempts, c.id).limit(limit)
            with self.engine.connect() as conn:
                ids: list[int] = []
                total = 0
                for row_id, size in conn.execute(sizes):
                    if ids and total + int(size or 0) > max_bytes:
                        break
                    ids.append(row_id)
                    total += int(size or 0)
            query = query.where(c.id.in_(ids))
        if self._is_sqlite:
            with self.engine.connect() as conn:
                batch = OutboxBatch(_outbox_rows(conn.execute(query)))
            yield batch
            with self.engine.begin() as conn:
                self._settle_outbox(conn, batch)
            return
        with self.engine.begin() as conn:
            batch = OutboxBatch(_outbox_rows(conn.execute(query.with_for_update(skip_locked=True))))
            yield batch
            self._settle_outbox(conn, batch)

    def enqueue(self, events: Sequence[OutboxEvent]) -> None:
        """Commit messages to the outbox in one transaction (e.g. a batch's dead letters)."""
        if not events:
            return
        if not self._schema_ready:
            self.create_schema()
        with self.engine.begin() as conn:
            conn.execute(self.outbox.insert(), [_outbox_values(e) for e in events])

    def _settle_outbox(self, conn: Any, batch: OutboxBatch) -> None:
        c = self.outbox.c
        if batch.published:
            conn.execute(delete(self.outbox).where(c.id.in_(batch.published)))
        if batch.failed:
            conn.execute(
                update(self.outbox).where(c.id.in_(batch.failed)).values(attempts=c.attempts + 1)
            )

    def outbox_backlog(self) -> tuple[int, float | None]:
        """Unpublished events and the age in seconds of the oldest (None when empty)."""
        if not self._schema_ready:
            self.create_schema()
        with self.engine.connect() as conn:
            count, oldest = conn.execute(
                select(func.count(), func.min(self.outbox.c.created_at))
            ).one()
        if not count or oldest is None:
            return int(count or 0), None
        oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=dt.UTC)
        return int(count), max(0.0, (dt.datetime.now(dt.UTC) - oldest).total_seconds())

    def get(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Stored predictions whose request id or record id is one of `ids`, as events."""
        if not ids:
            return []
        c = self.table.c
        query = (
            select(
                c.request_id,
                c.message_id,
                c.record_id,
                c.probability,
                c.is_default,
                c.threshold,
                c.model_version,
                c.received_at,
                c.scored_at,
                c.stored_at,
            )
            .where(or_(c.request_id.in_(list(ids)), c.record_id.in_(list(ids))))
            .order_by(c.stored_at, c.request_id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            {
                key: _iso(value) if isinstance(value, dt.datetime) else value
                for key, value in row.items()
            }
            for row in rows
        ]

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
