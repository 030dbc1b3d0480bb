"""Helpers shared by integration, fault and chart tests: the tests' names for creditstream.harness.

Fixtures live in conftest.py. Processes, results and metrics all come from the harness the
demo and the benchmark use; only what is about pytest (failing, skipping) is written here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from creditstream.harness.metrics import scrape
from creditstream.harness.processes import Process, ProcessGroup, process_env
from creditstream.harness.processes import free_port as free_port
from creditstream.harness.processes import run_cli as run_cli
from creditstream.harness.results import ResultsReader, StoredPrediction
from creditstream.settings import REPO_ROOT, Settings

AMQP_URL = os.environ.get("CREDITSTREAM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_URL = os.environ.get(
    "CREDITSTREAM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MODELS = REPO_ROOT / "models"
CREDITSTREAM = str(Path(sys.executable).with_name("creditstream"))
settings_env = process_env  # this environment without CREDITSTREAM_*, plus the settings


def data_path_or_skip() -> Path:
    """The real data set (Settings().data_path, default ../shared/data) or a visible skip."""
    path = Settings().data_path
    if not path.is_file():
        pytest.skip(f"UCI data set not found at {path} (set CREDITSTREAM_DATA_PATH)")
    return path


class Processes:
    """A ProcessGroup whose start() takes the settings per call; the `processes` fixture."""

    def __init__(self, log_dir: Path) -> None:
        self.group = ProcessGroup(log_dir, stop_timeout_s=20)

    def start(
        self, args: list[str], settings: Settings, name: str, *, http: bool = False, **env: str
    ) -> Process:
        """Start `creditstream ARGS` with the settings as environment, logging to a file."""
        return self.group.start(args, name=name, settings=settings, http=http, **env)

    def stop_all(self) -> None:
        """SIGTERM everything still running; SIGKILL what has not exited after 20 s."""
        self.group.stop_all()


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


def stored_rows(settings: Settings) -> list[StoredPrediction]:
    """(request_id, record_id, probability) of every stored prediction ([] before the table)."""
    with ResultsReader(settings) as reader:
        return reader.rows()


def count_rows(settings: Settings) -> int:
    """Number of stored predictions (0 before the table exists)."""
    with ResultsReader(settings) as reader:
        return reader.count()


def scrape_metric(port: int, name: str) -> float:
    """One series of a consumer's /metrics, e.g. `x_total{outcome="scored"}` (0 when absent)."""
    metrics = scrape(f"http://127.0.0.1:{port}/metrics", timeout_s=5)
    if metrics is None:
        raise ConnectionError(f"no /metrics answer on port {port}")
    return metrics[name]


def ready_in_queue(settings: Settings) -> int:
    """Ready messages in the settings' requests queue, on its vhost (0 before it exists)."""
    import pika
    import pika.exceptions

    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url.get_secret_value()))
    try:
        frame = connection.channel().queue_declare(settings.requests_queue, passive=True)
        return int(frame.method.message_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        connection.close()


def exit_code_within(process: Process, timeout: float) -> int | None:
    """The process's exit code, or None if it is still running after `timeout` seconds."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def read_results_stream(settings: Settings, idle_s: float = 1.0) -> list[dict[str, Any]]:
    """Every prediction event in the settings' results stream, from its first offset.

    Reads with plain pika (not creditstream's own follower): what any stream reader would see.
    Stops once nothing arrived for `idle_s`; [] when the stream does not exist.
    """
    import json

    import pika
    import pika.exceptions

    events: list[dict[str, Any]] = []
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url.get_secret_value()))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1000)  # NOTE: a stream consumer needs a prefetch
        try:
            for method, _props, body in channel.consume(
                settings.results_stream,
                arguments={"x-stream-offset": "first"},
                inactivity_timeout=idle_s,
            ):
                if method is None:
                    break
                events.extend(json.loads(body))
                channel.basic_ack(method.delivery_tag)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
    finally:
        if connection.is_open:
            connection.close()
    return events
