"""Isolated runs: a run's own exchanges and queues, and its own results store, removed after.

Every demo run, benchmark scenario and test that talks to the shared broker and database gets
its own names (`topology.isolated_names`), its own SQLite file, PostgreSQL schema or database,
and, where it needs one, its own RabbitMQ vhost. Teardown deletes exactly those. A run whose
names come out as default ones is refused before it starts, and deleting the default names is
refused by `topology.delete_topology` itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from creditstream.autoscale.queue_depth import management_url_from_amqp
from creditstream.settings import Settings, split_amqp_urls
from creditstream.topology import (
    declare_topology,
    delete_topology,
    isolated_names,
    refuse_shared_names,
)

log = logging.getLogger(__name__)

Store = Literal["sqlite", "postgresql"]


def unique_tag(name: str) -> str:
    """A unique, readable run tag: NAME-<8 hex>."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _identifier(name: str) -> str:
    """A PostgreSQL identifier (63 bytes at most) made of a run tag, unique as the tag is."""
    plain = re.sub(r"\W", "_", name).lower()
    encoded = plain.encode()
    # NOTE: PostgreSQL's limit is in bytes (NAMEDATALEN - 1), and it cuts longer names there.
    if len(encoded) <= 63:
        return plain
    # NOTE: the unique part of a tag is at its end: keep a digest of the whole, not a prefix.
    head = encoded[:46].decode(errors="ignore")  # never half a character
    return f"{head}_{hashlib.sha256(encoded).hexdigest()[:16]}"


@contextlib.contextmanager
def postgres_schema(pg_url: str, name: str) -> Iterator[str]:
    """A fresh schema NAME in the database at pg_url; dropped (cascade) afterwards."""
    schema = _identifier(name)
    engine = create_engine(pg_url)
    with engine.begin() as conn:  # NOTE: fails if it exists: never drop what is not ours
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        with contextlib.suppress(Exception), engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@contextlib.contextmanager
def postgres_database(pg_url: str, name: str) -> Iterator[str]:
    """A fresh database NAME on pg_url's server; the URL to reach it. Dropped (forced) after."""
    database = _identifier(name)
    # NOTE: CREATE/DROP DATABASE cannot run inside a transaction block.
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:  # NOTE: fails if it exists: never drop what is not ours
        conn.execute(text(f'CREATE DATABASE "{database}"'))
    try:
        yield make_url(pg_url).set(database=database).render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(Exception), engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        engine.dispose()


def _management(management_url: str, method: str, path: str, body: Any = None) -> None:
    parts = urllib.parse.urlsplit(management_url)
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    request = urllib.request.Request(
        f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=30):
        pass


@contextlib.contextmanager
def broker_vhost(amqp_url: str, name: str, management_url: str | None = None) -> Iterator[str]:
    """A RabbitMQ vhost NAME for the URL's user (management API); the AMQP URL into it.

    A comma-separated URL list (a cluster) gives the list with every URL into the vhost.
    Deleting the vhost afterwards deletes everything declared in it.
    """
    urls = split_amqp_urls(amqp_url)
    management = management_url or management_url_from_amqp(urls[0])
    user = urllib.parse.unquote(urllib.parse.urlsplit(urls[0]).username or "guest")
    quoted = urllib.parse.quote(name, safe="")
    try:
        _management(management, "GET", f"/api/vhosts/{quoted}")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
    else:  # NOTE: PUT would adopt it, and the clean-up would delete what is not ours
        raise ValueError(f"vhost {name!r} exists already")
    _management(management, "PUT", f"/api/vhosts/{quoted}", {})
    try:
        _management(
            management,
            "PUT",
            f"/api/permissions/{quoted}/{urllib.parse.quote(user, safe='')}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
        yield ",".join(
            urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path="/" + quoted))
            for url in urls
        )
    finally:
        with contextlib.suppress(urllib.error.URLError, OSError):
            _management(management, "DELETE", f"/api/vhosts/{quoted}")


def isolated_settings(
    base: Settings,
    prefix: str,
    *,
    database_url: str,
    database_schema: str | None = None,
    **overrides: Any,
) -> Settings:
    """The base settings with exchanges and queues `PREFIX.*`, a results store and `overrides`.

    Raises SharedTopologyError when a name comes out as a default one (a prefix that spells
    them, an override that puts one back): a run on those would work on every deployment's.
    """
    settings = base.model_copy(
        update={
            **isolated_names(prefix),
            "database_url": SecretStr(database_url),
            "database_schema": database_schema,
            **overrides,
        }
    )
    refuse_shared_names(settings, "run on")
    return settings


@contextlib.contextmanager
def isolated_run(
    base: Settings,
    prefix: str,
    *,
    store: Store = "sqlite",
    sqlite_file: Path | None = None,
    pg_url: str | None = None,
    keep_store: bool = False,
    declare: bool = True,
    **overrides: Any,
) -> Iterator[Settings]:
    """isolated_settings() for the time of the run: its topology and store exist, then go.

    store="sqlite" writes to `sqlite_file` (removed afterwards unless keep_store);
    store="postgresql" to a fresh schema in pg_url's database (dropped afterwards).
    `overrides` are further settings fields (run_id, batch_size, ...). With `declare` the
    topology exists on entry; it is deleted on exit either way.
    """
    # NOTE: checked before anything is created, so a refused run leaves nothing behind.
    refuse_shared_names(base.model_copy(update={**isolated_names(prefix), **overrides}), "run on")
    with contextlib.ExitStack() as stack:
        if store == "postgresql":
            if pg_url is None:
                raise ValueError("store='postgresql' needs pg_url")
            schema = stack.enter_context(postgres_schema(pg_url, f"run_{prefix}"))
            settings = isolated_settings(
                base, prefix, database_url=pg_url, database_schema=schema, **overrides
            )
        else:
            if sqlite_file is None:
                raise ValueError("store='sqlite' needs sqlite_file")
            if not keep_store:
                stack.callback(_remove_sqlite, sqlite_file)
            settings = isolated_settings(
                base, prefix, database_url=sqlite_url(sqlite_file), **overrides
            )
        stack.callback(delete_topology, settings)
        if declare:
            declare_topology(settings)
        yield settings


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of the SQLite file at `path`, escaped (`?`, `%` are path characters)."""
    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()
