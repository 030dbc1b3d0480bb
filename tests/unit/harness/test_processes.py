"""Settings -> a child's environment, isolated settings, SIGTERM-then-kill (no services)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from creditstream.harness.isolation import isolated_settings
from creditstream.harness.processes import ProcessGroup, process_env, run_cli
from creditstream.settings import Settings
from creditstream.topology import default_names
from tests.helpers import wait_until

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_settings_round_trip_through_the_environment(tmp_path: Path) -> None:
    settings = Settings(
        amqp_url="amqp://app:s3cret@broker:5672/v",
        database_url=f"sqlite:///{tmp_path / 'r.db'}",
        batch_size=7,
        threshold=0.3,
        run_id="r1",
    )
    env = settings.to_env()
    assert env["CREDITSTREAM_AMQP_URL"] == "amqp://app:s3cret@broker:5672/v"  # revealed
    assert "CREDITSTREAM_MANAGEMENT_URL" not in env  # unset stays unset
    child = Settings(**{k.removeprefix("CREDITSTREAM_").lower(): v for k, v in env.items()})
    assert child == settings


def test_a_child_does_not_inherit_the_parents_creditstream_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CREDITSTREAM_MANAGEMENT_URL", "http://parent:secret@elsewhere:15672/")
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))
    env = process_env(Settings(management_url=None), CREDITSTREAM_HTTP_PORT="0")
    assert "CREDITSTREAM_MANAGEMENT_URL" not in env
    assert env["CREDITSTREAM_HTTP_PORT"] == "0" and env["PATH"] == os.environ["PATH"]


def test_isolated_settings_rename_every_exchange_and_queue(tmp_path: Path) -> None:
    base = Settings()
    settings = isolated_settings(
        base,
        "creditstream.demo.20261128-000000",
        database_url=f"sqlite:///{tmp_path / 'predictions.sqlite'}",
        batch_size=4,
    )
    names = {field: getattr(settings, field) for field in default_names()}
    assert names["requests_queue"] == "creditstream.demo.20261128-000000.requests"
    assert not set(names.values()) & set(default_names().values())
    env = settings.to_env()
    assert env["CREDITSTREAM_DATABASE_URL"] == f"sqlite:///{tmp_path / 'predictions.sqlite'}"
    assert env["CREDITSTREAM_BATCH_SIZE"] == "4"


STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ignoring SIGTERM', flush=True)\n"
    "time.sleep(120)\n"
)


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path, Settings(), stop_timeout_s=1.0)
    stubborn = group.start([], name="stubborn", command=[sys.executable, "-c", STUBBORN])
    wait_until(lambda: "ignoring SIGTERM" in stubborn.log_text(), timeout=30)
    started = time.monotonic()
    assert group.stop_all() == [-signal.SIGKILL]
    assert 1.0 <= time.monotonic() - started < 10
    assert stubborn.log_path == tmp_path / "stubborn-000.log"


def _gone(pid: int) -> bool:
    """The process no longer exists (reaped by init after it became an orphan and died)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # NOTE: a zombie still answers kill(pid, 0) until init reaps it; it no longer runs.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


# A wrapper (a shell entrypoint, say) whose worker is a grandchild of the harness.
WRAPPERS = [
    pytest.param("sleep 120 & echo $! > {pidfile}; wait", id="wrapper-exits-on-sigterm"),
    pytest.param(
        "trap '' TERM; sleep 120 & echo $! > {pidfile}; wait", id="wrapper-ignores-sigterm"
    ),
]


@pytest.mark.parametrize("script", WRAPPERS)
def test_nothing_a_process_started_outlives_the_group(script: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "worker.pid"
    group = ProcessGroup(tmp_path, Settings(), stop_timeout_s=1.0)
    group.start([], name="wrapper", command=["sh", "-c", script.format(pidfile=pidfile)])
    wait_until(lambda: pidfile.is_file() and pidfile.read_text().strip() != "", timeout=30)
    worker = int(pidfile.read_text())
    try:
        group.stop_all()
        wait_until(lambda: _gone(worker), timeout=10, message=f"the worker {worker} to end")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def test_run_cli_past_its_timeout_leaves_no_grandchild(tmp_path: Path) -> None:
    # NOTE: subprocess.run kills only the child on timeout; a worker it started lived on.
    pidfile = tmp_path / "worker.pid"
    script = f"sleep 120 & echo $! > {pidfile}; wait"
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as raised:
        run_cli([], Settings(), timeout=2, command=["sh", "-c", f"echo started; {script}"])
    assert raised.value.output == "started\n"  # what it wrote before the timeout
    assert time.monotonic() - started < 15
    worker = int(pidfile.read_text())
    try:
        wait_until(lambda: _gone(worker), timeout=10, message=f"the worker {worker} to end")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def test_run_cli_returns_the_output_of_a_process_that_ends(tmp_path: Path) -> None:
    done = run_cli(
        [], Settings(), timeout=30, command=["sh", "-c", "echo out; echo err >&2; exit 3"]
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
