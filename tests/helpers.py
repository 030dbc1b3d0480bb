"""Helpers shared by integration, fault and chart tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from creditstream.autoscale.supervisor import free_port as free_port  # re-exported for tests
from creditstream.autoscale.supervisor import settings_env as supervisor_settings_env
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


def settings_env(settings: Settings) -> dict[str, str]:
    """This process's environment without CREDITSTREAM_*, plus the settings as variables."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CREDITSTREAM_")}
    return inherited | supervisor_settings_env(settings)


def run_cli(
    args: list[str], settings: Settings, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `creditstream ARGS` with the settings as environment; capture output."""
    return subprocess.run(
        [CREDITSTREAM, *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Processes:
    """Starts creditstream subprocesses and makes sure none outlives the test."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: list[str], settings: Settings, name: str, **env_overrides: str
    ) -> subprocess.Popen[bytes]:
        """Start `creditstream ARGS` with the settings as environment, logging to a file."""
        env = settings_env(settings) | env_overrides
        log_path = self.log_dir / f"{name}-{len(self.running)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [CREDITSTREAM, *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        process.log_path = log_path  # type: ignore[attr-defined]
        self.running.append(process)
        return process

    def stop_all(self) -> None:
        """SIGTERM everything still running; SIGKILL what has not exited after 20 s."""
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


def _predictions_table(settings: Settings) -> str:
    schema = settings.database_schema
    return f'"{schema}".predictions' if schema else "predictions"


def stored_rows(settings: Settings) -> list[tuple[str, str, float]]:
    """(request_id, record_id, probability) of every stored prediction ([] before the table)."""
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        with engine.connect() as conn:
            result = conn.execute(
                text(
                    f"SELECT request_id, record_id, probability FROM {_predictions_table(settings)}"
                )
            )
            return [(str(r[0]), str(r[1]), float(r[2])) for r in result]
    except Exception:  # noqa: BLE001 - table not created yet
        return []
    finally:
        engine.dispose()


def count_rows(settings: Settings) -> int:
    """Number of stored predictions (0 before the table exists)."""
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(f"SELECT count(*) FROM {_predictions_table(settings)}")
                ).scalar_one()
            )
    except Exception:  # noqa: BLE001 - table not created yet
        return 0
    finally:
        engine.dispose()


def scrape_metric(port: int, name: str) -> float:
    """One sample of a consumer's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith((name + " ", name + "{")):
                return float(line.rsplit(" ", 1)[1])
    return 0.0
