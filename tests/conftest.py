"""Shared fixtures: isolated broker names, isolated PostgreSQL schemas, settings, processes.

Integration and fault tests talk to the real RabbitMQ and PostgreSQL on this machine
(CREDITSTREAM_TEST_AMQP_URL / CREDITSTREAM_TEST_PG_URL override the defaults). Each test gets
its own exchange/queue names and its own PostgreSQL schema, deleted in `finally`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from creditstream.settings import Settings
from creditstream.topology import delete_topology, isolated_names
from tests.helpers import AMQP_URL, MODELS, PG_URL, Processes, data_path_or_skip


@pytest.fixture
def data_path() -> Path:
    """Path of the real UCI data set; skips with the reason when absent."""
    return data_path_or_skip()


@pytest.fixture
def broker_names(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Unique exchange and queue names for one test; deleted afterwards."""

    names = isolated_names(f"t{uuid.uuid4().hex[:10]}")
    try:
        yield names
    finally:
        delete_topology(Settings(amqp_url=AMQP_URL, **names))


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema in the test database; dropped afterwards."""
    from sqlalchemy import create_engine, text

    schema = f"cs_{uuid.uuid4().hex[:10]}"
    engine = create_engine(PG_URL)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL not usable at {PG_URL}: {exc} (run `make services`)")
    try:
        yield schema
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def make_settings(broker_names: dict[str, str], tmp_path: Path) -> Callable[..., Settings]:
    """Settings for one test: isolated broker names, a temp SQLite store, the committed model."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "amqp_url": AMQP_URL,
            "database_url": f"sqlite:///{tmp_path / 'results.db'}",
            "model_path": MODELS / "credit_default.onnx",
            "http_port": 0,
            "broker_wait_s": 10,
            "log_format": "json",
            **broker_names,
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Subprocess manager; everything it started is stopped in `finally`."""
    manager = Processes(tmp_path)
    try:
        yield manager
    finally:
        manager.stop_all()
