"""The machine and the versions a benchmark ran on (read, never assumed)."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from creditstream.settings import Settings

_PACKAGES = (
    "creditstream",
    "pika",
    "onnxruntime",
    "numpy",
    "scikit-learn",
    "SQLAlchemy",
    "psycopg",
)


def cpu_model(cpuinfo: str) -> str:
    """The first `model name` of /proc/cpuinfo text ('unknown' when absent)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return "unknown"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (the machine is shared: this says how noisy it was)."""
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return []


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, kernel."""
    cpuinfo = ""
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    memory_gb = None
    with contextlib.suppress(ImportError):
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(cpuinfo),
        "memory_gb": memory_gb,
        "kernel": platform.release(),
        "platform": platform.platform(),
    }


def rabbitmq_version(settings: Settings) -> str:
    """The broker's own `version` server property (AMQP handshake), else `rabbitmqctl version`."""
    import pika

    from creditstream.broker import connection_parameters

    try:
        connection = pika.BlockingConnection(
            connection_parameters(settings, name="creditstream-bench")
        )
        try:
            properties = connection._impl.server_properties or {}  # NOTE: pika has no public getter
        finally:
            connection.close()
        version = properties.get("version")
        if isinstance(version, bytes):
            version = version.decode()
        if version:
            return str(version)
    except Exception:  # noqa: BLE001 - fall back to the CLI
        pass
    try:
        done = subprocess.run(
            ["rabbitmqctl", "version"], capture_output=True, text=True, timeout=20, check=False
        )
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def postgresql_version(pg_url: str) -> str:
    """`SHOW server_version` of the benchmark database."""
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar_one())
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({type(exc).__name__})"
    finally:
        engine.dispose()


def versions(settings: Settings, pg_url: str) -> dict[str, str]:
    """Python, the libraries on the hot path, RabbitMQ, PostgreSQL and SQLite."""
    import sqlite3

    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["rabbitmq"] = rabbitmq_version(settings)
    found["postgresql"] = postgresql_version(pg_url)
    found["sqlite"] = sqlite3.sqlite_version
    return found
