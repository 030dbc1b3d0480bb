"""Shared fixtures: isolated broker names, isolated PostgreSQL schemas, settings, processes.

Integration and fault tests talk to the real RabbitMQ and PostgreSQL on this machine
(CREDITSTREAM_TEST_AMQP_URL / CREDITSTREAM_TEST_PG_URL override the defaults). Each test gets
its own exchange/queue names and its own PostgreSQL schema, deleted in `finally`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from creditstream.settings import REPO_ROOT, Settings

AMQP_URL = os.environ.get("CREDITSTREAM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_URL = os.environ.get(
    "CREDITSTREAM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MODELS = REPO_ROOT / "models"
CREDITSTREAM = str(Path(sys.executable).with_name("creditstream"))


def data_path_or_skip() -> Path:
    """The real data set (Settings().data_path, default ../shared/data) or a visible skip."""
    path = Settings().data_path
    if not path.is_file():
        pytest.skip(f"UCI data set not found at {path} (set CREDITSTREAM_DATA_PATH)")
    return path


@pytest.fixture
def data_path() -> Path:
    """Path of the real UCI data set; skips with the reason when absent."""
    return data_path_or_skip()


@pytest.fixture
def broker_names(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Unique exchange and queue names for one test; deleted afterwards."""
    import pika

    tag = f"t{uuid.uuid4().hex[:10]}"
    names = {
        "requests_exchange": f"{tag}.requests",
        "requests_queue": f"{tag}.requests",
        "dead_letter_exchange": f"{tag}.dead",
        "dead_letter_queue": f"{tag}.dead",
        "predictions_exchange": f"{tag}.predictions",
    }
    try:
        yield names
    finally:
        with contextlib.suppress(Exception):
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            channel = connection.channel()
            for queue in (names["requests_queue"], names["dead_letter_queue"]):
                channel.queue_delete(queue)
            for exchange in (
                names["requests_exchange"],
                names["dead_letter_exchange"],
                names["predictions_exchange"],
            ):
                channel.exchange_delete(exchange)
            connection.close()


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


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as CREDITSTREAM_* environment variables, for subprocesses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITSTREAM_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"CREDITSTREAM_{name.upper()}"] = str(value)
    return env


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Starts creditstream subprocesses and makes sure none outlives the test."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: list[str], settings: Settings, name: str, **env_overrides: str
    ) -> subprocess.Popen[bytes]:
        env = settings_env(settings) | env_overrides
        log = (self.log_dir / f"{name}-{len(self.running)}.log").open("wb")
        process = subprocess.Popen(
            [CREDITSTREAM, *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        process.log_path = Path(log.name)  # type: ignore[attr-defined]
        self.running.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Subprocess manager; everything it started is stopped in `finally`."""
    manager = Processes(tmp_path)
    try:
        yield manager
    finally:
        manager.stop_all()


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.1, message: str = "condition"
) -> None:
    """Poll `predicate` until true or fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g}s waiting for {message}")
