"""`creditstream` subcommands as local processes, each started from one Settings object.

A `ProcessGroup` starts processes with the settings' environment (`Settings.to_env()`), an HTTP
port of their own when asked, a log file each, and stops them the way Kubernetes stops a pod:
SIGTERM, a grace period, then SIGKILL. Nothing it started outlives it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from creditstream.harness.metrics import Metrics, scrape

if TYPE_CHECKING:
    from creditstream.settings import Settings

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that was free a moment ago (the OS picks it).

    NOTE: a race, by nature: the port is released before the child binds it, and another
    process may take it in between (rare: the kernel hands out ephemeral ports spread over
    ip_local_port_range). A consumer that cannot bind its port exits non-zero; the demo's
    Supervisor restarts it and ProcessGroup.restart() asks for a fresh port, so only a test
    starting processes by hand can see the clash, as a start-up failure that names the port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def cli_command(*args: str) -> list[str]:
    """argv of `creditstream ARGS` with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "creditstream.cli", *args]


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """This process's environment without CREDITSTREAM_*, plus the settings, plus `extra`.

    NOTE: inherited CREDITSTREAM_* variables are dropped so that a field left unset in the
    settings stays unset in the child instead of coming back from the parent's environment.
    """
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CREDITSTREAM_")}
    return inherited | settings.to_env() | extra


def run_cli(
    args: Sequence[str],
    settings: Settings,
    *,
    timeout: float = 300,
    command: Sequence[str] | None = None,
    **extra_env: str,
) -> subprocess.CompletedProcess[str]:
    """Run `creditstream ARGS` (or `command ARGS`) to the end; stdout and stderr captured.

    Past `timeout` it SIGKILLs the process and everything it started (its own session, so
    its process group), then raises subprocess.TimeoutExpired with the output so far.
    """
    argv = [*(command or cli_command()), *args]
    with subprocess.Popen(
        argv,
        env=process_env(settings, **extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # NOTE: subprocess.run would kill the child alone
    ) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            # NOTE: the group is gone, so the pipes reach EOF; bounded all the same.
            stdout, stderr = "", ""
            with contextlib.suppress(subprocess.TimeoutExpired):
                stdout, stderr = popen.communicate(timeout=10)
            raise subprocess.TimeoutExpired(argv, timeout, output=stdout, stderr=stderr) from None
        finally:
            # NOTE: the leader exited; what it left running in its group ends with it.
            if popen.poll() is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(argv, popen.returncode, stdout, stderr)


@dataclass(eq=False)
class Process:
    """One started process, its port and log, and its last metrics (kept past its death)."""

    index: int
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)  # NOTE: holds the secrets, keep it out of logs
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None
    started_at: float
    own_group: bool = False  # leader of a process group of its own (start_new_session)
    stopping_since: float | None = None
    last_metrics: Metrics = field(default_factory=Metrics)

    @property
    def pid(self) -> int:
        """OS process id."""
        return self.popen.pid

    @property
    def alive(self) -> bool:
        """Still running."""
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit code (negative: killed by that signal); None while running."""
        return self.popen.poll()

    def poll(self) -> int | None:
        """subprocess.Popen.poll."""
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        """subprocess.Popen.wait."""
        return self.popen.wait(timeout)

    def send_signal(self, signum: int) -> None:
        """Signal the process if it still runs."""
        if self.alive:
            self.popen.send_signal(signum)

    def url(self, path: str) -> str:
        """http://127.0.0.1:PORT/PATH of its HTTP endpoints."""
        if self.port is None:
            raise ValueError(f"{self.name} was started without an HTTP port")
        return f"http://{LOCALHOST}:{self.port}/{path.lstrip('/')}"

    @property
    def metrics_url(self) -> str:
        """Its Prometheus endpoint."""
        return self.url("metrics")

    def http_status(self, path: str, timeout_s: float = 1.0) -> int:
        """Status of GET PATH (0: no answer)."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout_s) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def ready(self) -> bool:
        """/readyz answers 200."""
        return self.http_status("readyz") == 200

    def scrape(self, timeout_s: float = 2.0) -> Metrics | None:
        """Scrape /metrics now and remember it; None (last scrape kept) when it does not answer."""
        if not self.alive:
            return None
        metrics = scrape(self.metrics_url, timeout_s)
        if metrics is not None:
            self.last_metrics = metrics
        return metrics

    def log_text(self) -> str:
        """Everything it wrote so far."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, lines: int = 8) -> str:
        """The last lines of its log, on one line (for error messages)."""
        return " | ".join(self.log_text().strip().splitlines()[-lines:])

    def terminate(self) -> None:
        """SIGTERM (the consumer drains and exits 0), remembering when."""
        self.send_signal(signal.SIGTERM)
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()

    def kill(self) -> None:
        """SIGKILL to it and to everything it started (its process group, when it has one)."""
        if self.own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        else:
            self.popen.kill()

    def kill_leftovers(self) -> None:
        """Once it has exited: SIGKILL what it started and left running (its process group).

        NOTE: the group id is the leader's pid, which the kernel does not hand out again while
        any member of the group lives; a leader that has not exited is never touched here.
        """
        if self.own_group and self.popen.poll() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)


@dataclass
class ProcessGroup:
    """Starts `creditstream` subcommands from one Settings object; stops all of them at the end."""

    log_dir: Path
    settings: Settings | None = None  # the default of start()
    # NOTE: own session, so a terminal Ctrl-C reaches only the parent, which then stops its
    # children in order instead of racing them.
    new_session: bool = True
    stop_timeout_s: float = 30.0
    processes: list[Process] = field(default_factory=list)

    def start(
        self,
        args: Sequence[str],
        *,
        name: str,
        http: bool = False,
        settings: Settings | None = None,
        command: Sequence[str] | None = None,
        **extra_env: str,
    ) -> Process:
        """Start `creditstream ARGS` (or `command ARGS`), logging to LOG_DIR/NAME-NNN.log.

        `http=True` gives it a free port on 127.0.0.1 (CREDITSTREAM_HTTP_PORT/HOST).
        """
        port = free_port() if http else None
        if port is not None:
            extra_env = {
                "CREDITSTREAM_HTTP_PORT": str(port),
                "CREDITSTREAM_HTTP_HOST": LOCALHOST,
                **extra_env,
            }
        settings = settings or self.settings
        if settings is None:
            raise ValueError("start() needs settings (or a ProcessGroup built with them)")
        env = process_env(settings, **extra_env)
        argv = (*(command or cli_command()), *args)
        return self._spawn(name, argv, env, port)

    def restart(self, process: Process) -> Process:
        """The same command and environment again (a fresh port if it had one): a new pod."""
        env = dict(process.env)
        port = None
        if process.port is not None:
            port = free_port()
            env["CREDITSTREAM_HTTP_PORT"] = str(port)
        return self._spawn(process.name, process.argv, env, port)

    def _spawn(
        self, name: str, argv: tuple[str, ...], env: Mapping[str, str], port: int | None
    ) -> Process:
        index = len(self.processes)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}-{index:03d}.log"
        with log_path.open("wb") as handle:  # NOTE: the child keeps its own descriptor
            popen = subprocess.Popen(
                argv,
                env=dict(env),
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.new_session,
            )
        process = Process(
            index, name, argv, env, popen, log_path, port, time.monotonic(), self.new_session
        )
        self.processes.append(process)
        return process

    @property
    def alive(self) -> list[Process]:
        """Processes still running."""
        return [p for p in self.processes if p.alive]

    def stop(self, processes: Sequence[Process], timeout_s: float | None = None) -> list[int]:
        """SIGTERM each, wait up to the grace period, SIGKILL the rest; their exit codes."""
        for process in processes:
            process.terminate()
        deadline = time.monotonic() + (self.stop_timeout_s if timeout_s is None else timeout_s)
        codes = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        for process in processes:
            process.kill_leftovers()
        return codes

    def stop_all(self, timeout_s: float | None = None) -> list[int]:
        """Stop every process still running, and whatever any of them left behind; exit codes."""
        codes = self.stop(self.alive, timeout_s)
        for process in self.processes:  # NOTE: also those that had exited (crashed) before
            process.kill_leftovers()
        return codes

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_all()
