"""Per-scenario isolation: unique exchanges/queues, a PostgreSQL schema or a temp SQLite file."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
from pydantic import SecretStr

from creditstream.bench.plan import Store
from creditstream.settings import Settings
from creditstream.topology import declare_topology, delete_topology, isolated_names

log = logging.getLogger(__name__)


def scenario_settings(
    base: Settings, tag: str, *, database_url: str, schema: str | None
) -> Settings:
    """The base settings with this scenario's own broker names and results store."""
    prefix = f"creditstream.bench.{tag}"
    return base.model_copy(
        update={
            **isolated_names(prefix),
            "database_url": SecretStr(database_url),
            "database_schema": schema,
            "run_id": tag,
        }
    )


def new_tag(name: str) -> str:
    """A unique, readable scenario tag."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def queue_depth(settings: Settings) -> int:
    """Ready messages in the scenario's requests queue (passive declare)."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url.get_secret_value()))
    try:
        frame = connection.channel().queue_declare(settings.requests_queue, passive=True)
        return int(frame.method.message_count)
    finally:
        connection.close()


@contextlib.contextmanager
def isolated(
    base: Settings, name: str, store: Store, work_dir: Path, pg_url: str
) -> Iterator[Settings]:
    """Settings with unique queues and a fresh store; everything is removed afterwards."""
    tag = new_tag(name)
    schema: str | None = None
    sqlite_file: Path | None = None
    if store == "postgresql":
        from sqlalchemy import create_engine, text

        schema = "bench_" + tag.replace("-", "_").replace(".", "_")
        engine = create_engine(pg_url)
        try:
            with engine.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        finally:
            engine.dispose()
        url = pg_url
    else:
        sqlite_file = work_dir / f"{tag}.sqlite"
        url = f"sqlite:///{sqlite_file}"
    settings = scenario_settings(base, tag, database_url=url, schema=schema)
    declare_topology(settings)
    try:
        yield settings
    finally:
        delete_topology(settings)
        if schema is not None:
            from sqlalchemy import create_engine, text

            engine = create_engine(pg_url)
            try:
                with engine.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            finally:
                engine.dispose()
        if sqlite_file is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{sqlite_file}{suffix}").unlink()
