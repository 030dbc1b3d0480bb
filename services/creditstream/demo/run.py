"""`creditstream demo`: broker check, per-run queues, burst/pause/burst load, local KEDA rule.

Isolation: every run declares its own exchange and queues, named `creditstream.demo.<run id>.*`,
and deletes them at the end (also on Ctrl-C), so leftovers of other runs cannot leak in and
nothing of this run lingers. Children run in their own session: Ctrl-C reaches only the demo,
which then SIGTERMs the consumers (they drain) and the producers.

Load: each burst is published at a fixed rate that one consumer cannot keep up with, so the
backlog builds, the rule adds replicas step by step, the replicas catch up and drain it, and
the rule steps back down to zero. With the real data set the two bursts are consecutive row
ranges (rows 1-15,000, then 15,001-30,000), so every record is scored exactly once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
from rich.console import Console
from rich.live import Live

from creditstream.autoscale.queue_depth import (
    AMQP_SOURCE,
    FallbackDepthReader,
    ManagementApiReader,
    PassiveDeclareReader,
    QueueDepth,
    QueueDepthError,
    depth_reader_for,
)
from creditstream.autoscale.rule import (
    AutoscalingConfig,
    KedaHpaAutoscaler,
    flatten_values,
    load_chart_values,
    merge_values,
    with_queue,
)
from creditstream.autoscale.supervisor import Supervisor, settings_env
from creditstream.demo.dashboard import DashboardState, plain_line, render
from creditstream.demo.latency import HistogramAggregator, histogram_from_text
from creditstream.demo.summary import (
    PredictionsReader,
    auc_against_labels,
    labels_from_dataset,
    sqlite_path,
)
from creditstream.settings import REPO_ROOT, Settings
from creditstream.timeline import TimelineRow, TimelineWriter, plot_timeline, summarize_timeline
from creditstream.topology import declare_topology, delete_topology, isolated_names

log = logging.getLogger(__name__)

CHART_VALUES: Final = REPO_ROOT / "charts" / "creditstream" / "values.yaml"
E2E_HISTOGRAM: Final = "creditstream_end_to_end_seconds"

# NOTE: layered on the chart values like `helm --set` and printed at start. The chart's cooldown
# (60 s) and scale-down window (60 s) would stretch the demo past 5 minutes. The consumer commits
# every batch durably (SQLite synchronous=FULL: one fsync per batch), so records/s per process
# is about batch size x commits/s: with the chart's batchSize 256 / prefetch 1024 one process
# scores ~1,700 records/s on a 2-core laptop and a 15,000-record burst is gone before the rule
# has polled twice; with 4 / 4 one process scores ~300 records/s and more replicas add
# throughput (~500/s with 2, ~850/s with 4, measured here), so a 500 records/s producer
# outruns one replica and scaling out is what catches up.
DEMO_OVERRIDES: Final[Mapping[str, Any]] = {
    "consumer": {"batchSize": 4, "prefetch": 4},
    "autoscaling": {
        "cooldownPeriod": 20,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 15}},
    },
}
# NOTE: between one replica's throughput and four replicas' (see DEMO_OVERRIDES), and low
# enough that a 15,000-record burst lasts ~30 s.
DEFAULT_BURST_RATE: Final = 500.0
STATS_WAIT_S: Final = 15.0
# NOTE: kube-controller-manager --horizontal-pod-autoscaler-sync-period (default 15 s).
DEMO_HPA_SYNC_PERIOD_S: Final = 5.0

BROKER_MISSING_HELP: Final = """RabbitMQ is not reachable at {where} ({error}).
Start one, then run `make demo` again:
  Debian/Ubuntu:  sudo apt-get install -y rabbitmq-server && sudo service rabbitmq-server start
                  sudo rabbitmq-plugins enable rabbitmq_management   # queue depth incl. unacked
  Docker:         docker run -d --name rabbitmq -p 5672:5672 -p 15672:15672 rabbitmq:4-management
  Elsewhere:      export CREDITSTREAM_AMQP_URL=amqp://user:pass@host:5672/"""

MANAGEMENT_MISSING_HELP: Final = (
    "management API not reachable at {where}: using the AMQP passive-declare count (ready only, "
    "labelled `amqp-passive-declare` in the plot). Enable it with "
    "`sudo rabbitmq-plugins enable rabbitmq_management`."
)


def await_queue_statistics(
    reader: ManagementApiReader, *, timeout_s: float, poll_s: float = 0.5
) -> float | None:
    """Seconds until the management API reports the queue's counts (None: not within timeout).

    NOTE: a queue declared a moment ago has no `messages` yet (collect_statistics_interval,
    5 s by default); starting the load only then keeps the trigger metric one source all along.
    """
    started = time.monotonic()
    while True:
        try:
            reader.read()
        except QueueDepthError:
            if time.monotonic() - started >= timeout_s:
                return None
            time.sleep(poll_s)
        else:
            return time.monotonic() - started


class DemoError(RuntimeError):
    """The demo cannot start (with a message that says what to do)."""


@dataclass(frozen=True)
class LoadProfile:
    """Burst, pause, burst at a fixed rate: wake the consumers twice and scale them past one."""

    first_burst: int = 15_000
    pause_s: float = 45.0
    second_burst: int = 15_000
    rate: float | None = None  # records/s per burst; None: DEFAULT_BURST_RATE

    @property
    def records_per_s(self) -> float:
        """The producer's --rate for every burst."""
        return self.rate or DEFAULT_BURST_RATE

    @property
    def bursts(self) -> list[int]:
        """Records per burst, in order."""
        return [n for n in (self.first_burst, self.second_burst) if n]


@dataclass(frozen=True)
class ConsumerKnobs:
    """The consumer's micro-batching knobs, read from the chart's `consumer:` values."""

    batch_size: int
    batch_timeout_ms: int
    prefetch: int

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> ConsumerKnobs:
        """`consumer.batchSize`, `.batchTimeoutMs`, `.prefetch` (the chart passes them as env)."""
        consumer = values.get("consumer") or {}
        return cls(
            batch_size=int(consumer["batchSize"]),
            batch_timeout_ms=int(consumer["batchTimeoutMs"]),
            prefetch=int(consumer["prefetch"]),
        )

    def describe(self) -> str:
        """One line for the console."""
        return (
            f"batchSize={self.batch_size} batchTimeoutMs={self.batch_timeout_ms} "
            f"prefetch={self.prefetch}"
        )


@dataclass(frozen=True)
class DemoValues:
    """The chart values as the demo uses them, and the override lines it prints."""

    autoscaling: AutoscalingConfig
    consumer: ConsumerKnobs
    override_lines: list[str]


@dataclass(frozen=True)
class DataChoice:
    """Where the demo's records come from, said out loud."""

    kind: str  # "data set" | "downloaded data set" | "synthetic"
    path: Path | None
    note: str


@dataclass
class DemoOptions:
    """Knobs of one demo run."""

    profile: LoadProfile = field(default_factory=LoadProfile)
    max_duration_s: float = 270.0
    tick_s: float = 1.0
    runs_dir: Path = REPO_ROOT / "runs"
    set_overrides: list[Mapping[str, Any]] = field(default_factory=list)
    allow_download: bool = True
    dashboard: bool | None = None


def check_broker(amqp_url: str) -> None:
    """Connect once; raise DemoError with start-up instructions if the broker is missing."""
    import pika
    import pika.exceptions

    params = pika.URLParameters(amqp_url)
    params.connection_attempts = 1
    params.socket_timeout = 3
    try:
        pika.BlockingConnection(params).close()
    except pika.exceptions.AMQPError as exc:
        where = f"{params.host}:{params.port}"
        raise DemoError(BROKER_MISSING_HELP.format(where=where, error=type(exc).__name__)) from exc


def choose_data(settings: Settings, *, allow_download: bool) -> DataChoice:
    """The real data set if present, else a download when online, else synthetic records."""
    if settings.data_path.is_file():
        return DataChoice("data set", settings.data_path, f"real UCI data at {settings.data_path}")
    from creditstream.data.source import DataSourceError, resolve_data_path

    try:
        path = resolve_data_path(settings, allow_download=allow_download)
    except DataSourceError as exc:
        return DataChoice("synthetic", None, f"SYNTHETIC records from the model card ({exc})")
    return DataChoice("downloaded data set", path, f"downloaded UCI data at {path}")


def demo_settings(
    base: Settings, run_id: str, run_dir: Path, consumer: ConsumerKnobs | None = None
) -> Settings:
    """Per-run exchange/queues, a per-run SQLite results store, the chart's consumer knobs."""
    prefix = f"creditstream.demo.{run_id}"
    knobs = {} if consumer is None else asdict(consumer)
    return base.model_copy(
        update={
            **knobs,
            # NOTE: every name isolated, predictions exchange included: the run deletes them.
            **isolated_names(prefix),
            "database_url": _secret(f"sqlite:///{run_dir / 'predictions.sqlite'}"),
            "database_schema": None,
            "run_id": run_id,
        }
    )


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


def load_demo_values(overrides: list[Mapping[str, Any]], queue: str) -> DemoValues:
    """Chart values + demo overrides + --set overrides; the printed override lines."""
    values = load_chart_values(CHART_VALUES)
    lines = []
    for overlay in [DEMO_OVERRIDES, *overrides]:
        values = merge_values(values, overlay)
        lines.extend(flatten_values(overlay))
    config = AutoscalingConfig.from_values(values, hpa_sync_period_s=DEMO_HPA_SYNC_PERIOD_S)
    lines.append(
        f"(kube-controller-manager) --horizontal-pod-autoscaler-sync-period="
        f"{DEMO_HPA_SYNC_PERIOD_S:g}s"
    )
    lines.append(f"consumer.queueName={queue}  (per-run queue)")
    return DemoValues(with_queue(config, queue), ConsumerKnobs.from_values(values), lines)


def burst_row_ranges(total_rows: int, bursts: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Consecutive [start, end) row ranges per burst, wrapping around past the last row.

    Bursts that fit in the data set together get disjoint rows (each record scored once);
    larger ones start over at row 0 (the producer gives the repeats new request ids).
    """
    if total_rows <= 0:
        raise ValueError("the data set has no rows")
    ranges: list[list[tuple[int, int]]] = []
    start = 0
    for records in bursts:
        parts: list[tuple[int, int]] = []
        left = records
        while left > 0:
            end = min(start + left, total_rows)
            parts.append((start, end))
            left -= end - start
            start = end % total_rows
        ranges.append(parts)
    return ranges


def describe_rows(parts: Sequence[tuple[int, int]]) -> str:
    """`rows 15,001-30,000` (1-based, inclusive) for a burst's row ranges."""
    return "rows " + " + ".join(f"{start + 1:,}-{end:,}" for start, end in parts)


def write_burst_files(path: Path, bursts: Sequence[int], out_dir: Path) -> list[tuple[Path, str]]:
    """One CSV per burst with its slice of the data set; (file, row description) per burst."""
    from creditstream.data.dataset import load_dataset

    frame = load_dataset(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for index, parts in enumerate(burst_row_ranges(len(frame), bursts), start=1):
        target = out_dir / f"burst-{index}.csv"
        slices = [frame.iloc[start:end] for start, end in parts]
        slices[0].iloc[0:0].to_csv(target, index=False)
        for piece in slices:
            piece.to_csv(target, mode="a", header=False, index=False)
        files.append((target, describe_rows(parts)))
    return files


@dataclass
class _Producer:
    name: str
    records: int
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    started_at: float


@dataclass(frozen=True)
class Burst:
    """One planned `creditstream produce` run."""

    name: str
    records: int
    delay_s: float  # after the previous burst finished
    data: Path | None  # None: --synthetic
    rows: str = ""


@dataclass(frozen=True)
class FinishedBurst:
    """A producer that exited."""

    name: str
    records: int
    exit_code: int
    seconds: float


class LoadDriver:
    """Runs the burst/pause/burst profile as `creditstream produce --rate R` subprocesses."""

    def __init__(
        self, settings: Settings, profile: LoadProfile, bursts: Sequence[Burst], run_dir: Path
    ) -> None:
        self.settings = settings
        self.profile = profile
        self.run_dir = run_dir
        self.started: float | None = None
        self.active: _Producer | None = None
        self.finished: list[FinishedBurst] = []
        self._plan = list(bursts)
        self._next_at = 0.0

    def _start(self, burst: Burst, now: float) -> _Producer:
        tag = burst.name.replace(" ", "")
        command = [
            sys.executable,
            "-m",
            "creditstream.cli",
            "produce",
            "--limit",
            str(burst.records),
            "--run-id",
            f"{self.settings.run_id}-{tag}",
            "--rate",
            f"{self.profile.records_per_s:g}",
            "--no-progress",
        ]
        command += ["--synthetic"] if burst.data is None else ["--data", str(burst.data)]
        env = dict(os.environ)
        env.update(settings_env(self.settings))
        handle = (self.run_dir / f"producer-{tag}.log").open("ab")
        popen = subprocess.Popen(
            command,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return _Producer(burst.name, burst.records, popen, handle, now)

    def poll(self, now: float) -> str:
        """Advance the profile; return the current phase label."""
        if self.started is None:
            self.started = now
        if self.active is not None:
            code = self.active.popen.poll()
            if code is None:
                return self.active.name
            self.active.log.close()
            self.finished.append(
                FinishedBurst(
                    self.active.name, self.active.records, code, now - self.active.started_at
                )
            )
            self.active = None
            if self._plan:
                self._next_at = now + self._plan[0].delay_s
        if self._plan and now >= self._next_at:
            self.active = self._start(self._plan.pop(0), now)
            return self.active.name
        return "pause" if self._plan else "drain"

    @property
    def done(self) -> bool:
        """All bursts sent (or failed)."""
        return self.active is None and not self._plan

    @property
    def produced(self) -> int:
        """Records confirmed by producers that exited 0."""
        return sum(b.records for b in self.finished if b.exit_code == 0)

    @property
    def sending(self) -> int:
        """Records of finished or running bursts (what can be expected in the store)."""
        running = self.active.records if self.active else 0
        return self.produced + running

    def stop(self) -> None:
        """Terminate a running producer."""
        if self.active is not None and self.active.popen.poll() is None:
            self.active.popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.active.popen.wait(10)
            self.active.log.close()


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return str(response.read().decode("utf-8"))
    except OSError:
        return None


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    def _raise(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(base: Settings, options: DemoOptions, console: Console | None = None) -> int:
    """The whole demo; returns the exit code (0 when every produced record was scored once)."""
    console = console or Console()
    amqp_url = base.amqp_url.get_secret_value()
    try:
        check_broker(amqp_url)
    except DemoError as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    if not base.model_path.is_file():
        console.print(
            f"[red]no model at {base.model_path}[/]: run `make train` "
            "(or `creditstream train`), or set CREDITSTREAM_MODEL_PATH."
        )
        return 2
    started_wall = datetime.now()
    run_id = started_wall.strftime("%Y%m%d-%H%M%S")
    run_dir = options.runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    queue = demo_settings(base, run_id, run_dir).requests_queue
    demo_values = load_demo_values(options.set_overrides, queue)
    config, override_lines = demo_values.autoscaling, demo_values.override_lines
    settings = demo_settings(base, run_id, run_dir, demo_values.consumer)
    data = choose_data(base, allow_download=options.allow_download)
    bursts = plan_bursts(options.profile, data, run_dir / "records")

    reader = depth_reader_for(
        amqp_url,
        settings.requests_queue,
        management_url=_maybe_secret(settings.management_url),
        protocol=config.protocol,
    )
    console.rule(f"creditstream demo {run_id}")
    console.print(
        f"broker     {_redact(amqp_url)}  (queue depth via "
        f"{'management API ' + reader.primary.endpoint if reader.primary else 'AMQP'})"
    )
    if reader.primary is not None and not reader.primary.ping():
        console.print("[yellow]" + MANAGEMENT_MISSING_HELP.format(where=reader.primary.endpoint))
        reader = FallbackDepthReader(None, reader.fallback)
    console.print(f"model      {base.model_path}")
    console.print(f"records    {data.note}")
    console.print("load       " + describe_load(options.profile, bursts))
    console.print(f"rule       chart values {CHART_VALUES.relative_to(REPO_ROOT)}")
    for line in config.describe():
        console.print(f"           {line}")
    console.print(f"consumer   {demo_values.consumer.describe()}  (chart consumer.* + overrides)")
    console.print("overrides  " + "\n           ".join(override_lines))
    console.print(f"run folder {run_dir}   (bounded: at most {options.max_duration_s:g} s)")

    declare_topology(settings)
    if reader.primary is not None:
        waited = await_queue_statistics(reader.primary, timeout_s=STATS_WAIT_S)
        console.print(
            f"stats      management API counts the new queue after {waited:.1f} s"
            if waited is not None
            else f"[yellow]stats      no management statistics for the new queue after "
            f"{STATS_WAIT_S:g} s: the AMQP ready count (labelled) stands in until they come[/]"
        )
    dead_reader = PassiveDeclareReader(amqp_url, settings.dead_letter_queue)
    supervisor = Supervisor(settings, log_dir=run_dir / "consumers")
    scaler = KedaHpaAutoscaler(config, created_at=0.0)
    load = LoadDriver(settings, options.profile, bursts, run_dir)
    predictions = PredictionsReader(sqlite_path(settings.database_url.get_secret_value()))
    latency = HistogramAggregator()
    window: deque[tuple[float, Any]] = deque()
    events: list[str] = []
    decisions_log = (run_dir / "decisions.csv").open("w", encoding="utf-8")
    decisions_log.write("t_s,loop,metric,active,current,desired,reason\n")
    writer = TimelineWriter(run_dir / "timeline.csv")
    interactive = console.is_terminal if options.dashboard is None else options.dashboard
    t0 = time.monotonic()
    previous_count, previous_t = 0, t0
    last_decision = "-"
    interrupted = False
    timed_out = False
    desired = 0
    header = f"creditstream demo — {data.kind} — rule: chart values + printed overrides"
    live = Live(console=console, refresh_per_second=4, transient=False) if interactive else None
    last_plain = -10.0
    try:
        with _interrupt_on_sigterm(), live or contextlib.nullcontext():
            while True:
                now = time.monotonic()
                t = now - t0
                phase = load.poll(t)
                depth = _read_depth(reader)
                metric = depth.messages if depth is not None else None
                ready_live = _read_live_ready(reader, depth)
                if metric is not None:
                    desired, decisions = scaler.step(t, metric, desired)
                    for d in decisions:
                        decisions_log.write(
                            f"{t:.2f},{d.loop},{d.metric:g},{d.active},"
                            f"{d.current},{d.desired},{d.reason}\n"
                        )
                        if d.desired != d.current:
                            last_decision = f"{d.loop}: {d.current} -> {d.desired} ({d.reason})"
                            events.append(f"{t:6.1f}s  {last_decision}  [depth {d.metric:g}]")
                    decisions_log.flush()
                n_events = len(supervisor.events)
                supervisor.scale_to(desired)
                for event in supervisor.events[n_events:]:
                    events.append(f"{t:6.1f}s  consumer {event.index} {event.kind} {event.detail}")
                count = predictions.count()
                rate = (count - previous_count) / max(now - previous_t, 1e-6)
                previous_count, previous_t = count, now
                p50, p99 = _window_latency(supervisor, latency, window, t)
                dead = _read_dead(dead_reader)
                state = DashboardState(
                    elapsed_s=t,
                    phase=phase,
                    queue_depth=metric,
                    depth_source=depth.source if depth else "unavailable",
                    ready_live=ready_live,
                    desired=desired,
                    running=supervisor.running,
                    draining=supervisor.draining,
                    records_per_s=rate,
                    scored=count,
                    produced=load.sending,
                    p50_ms=p50,
                    p99_ms=p99,
                    dead_lettered=dead,
                    last_decision=last_decision,
                )
                writer.write(
                    TimelineRow(
                        t_s=t,
                        queue_depth=metric,
                        depth_source=state.depth_source,
                        desired_replicas=desired,
                        running_replicas=supervisor.running,
                        records_per_s=rate,
                        p50_ms=p50,
                        p99_ms=p99,
                        dead_lettered=dead,
                        scored_total=count,
                        phase=phase,
                        ready_live=ready_live,
                    )
                )
                if live is not None:
                    live.update(render(state, events, header))
                elif t - last_plain >= 5:
                    console.print(plain_line(state))
                    last_plain = t
                settled = (
                    load.done
                    and count >= load.produced
                    and desired == 0
                    and supervisor.running == 0
                    and supervisor.draining == 0
                )
                if settled:
                    break
                if t > options.max_duration_s:
                    timed_out = True
                    break
                time.sleep(max(0.0, options.tick_s - (time.monotonic() - now)))
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: stopping producers, draining consumers...[/]")
    finally:
        load.stop()
        supervisor.shutdown(timeout_s=30)
        writer.close()
        decisions_log.close()
        reader.close()
        dead_reader.close()
        delete_topology(settings)
        # NOTE: the burst files are copies of data-set rows; the run folder keeps no data.
        shutil.rmtree(run_dir / "records", ignore_errors=True)
    elapsed = time.monotonic() - t0
    summary = _summarize(
        run_dir,
        writer.rows,
        load,
        predictions,
        latency,
        supervisor,
        data,
        elapsed,
        config,
        demo_values,
    )
    predictions.close()
    if writer.rows:
        stats = summarize_timeline(writer.rows)
        plot_timeline(
            writer.rows,
            run_dir / "timeline.png",
            title=f"creditstream demo {run_id}: queue depth drives consumer replicas",
            subtitle=f"{data.kind}, {len(bursts)} x {_bursts_text(bursts)} records at "
            f"{options.profile.records_per_s:g}/s; rule value={config.value:g}, "
            f"max={config.max_replica_count}, cooldown={config.cooldown_period_s:g}s; "
            f"consumer batch {demo_values.consumer.batch_size}; peak "
            f"{stats.peak_running} replicas; {summary['records_scored']:,} records scored",
        )
    _print_summary(console, summary, run_dir)
    if interrupted:
        return 130
    if timed_out:
        console.print(f"[red]did not settle within {options.max_duration_s:g} s[/]")
        return 1
    return 0 if summary["every_record_scored_once"] else 1


def _maybe_secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())


def _redact(url: str) -> str:
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urllib.parse.urlunsplit(
        (parts.scheme, f"{parts.username or ''}:***@{host}{port}", parts.path, "", "")
    )


def _read_depth(reader: FallbackDepthReader) -> QueueDepth | None:
    try:
        return reader.read()
    except QueueDepthError as exc:
        log.warning("queue depth unavailable: %s", exc)
        return None


def _read_live_ready(reader: FallbackDepthReader, depth: QueueDepth | None) -> int | None:
    """The ready count right now (AMQP passive declare), beside the management API's reading."""
    if depth is not None and depth.source == AMQP_SOURCE:
        return depth.ready
    try:
        return reader.fallback.read().ready
    except QueueDepthError:
        return None


def _read_dead(reader: PassiveDeclareReader) -> int | None:
    try:
        return reader.read().ready
    except QueueDepthError:
        return None


def _window_latency(
    supervisor: Supervisor, latency: HistogramAggregator, window: deque[tuple[float, Any]], t: float
) -> tuple[float | None, float | None]:
    for index, url in supervisor.metrics_urls():
        text = _scrape(url)
        if text is not None:
            latency.update(index, histogram_from_text(text, E2E_HISTOGRAM))
    total = latency.total()
    window.append((t, total))
    while len(window) > 1 and window[0][0] < t - 5.0:
        window.popleft()
    recent = total - window[0][1] if len(window) > 1 else total
    p50, p99 = recent.quantile(0.5), recent.quantile(0.99)
    return (None if p50 is None else p50 * 1000, None if p99 is None else p99 * 1000)


def _summarize(
    run_dir: Path,
    rows: list[TimelineRow],
    load: LoadDriver,
    predictions: PredictionsReader,
    latency: HistogramAggregator,
    supervisor: Supervisor,
    data: DataChoice,
    elapsed: float,
    config: AutoscalingConfig,
    demo_values: DemoValues,
) -> dict[str, Any]:
    counts = predictions.counts()
    stats = summarize_timeline(rows)
    e2e = latency.total()
    processing = predictions.processing_latencies_ms()
    rates = [r.records_per_s for r in rows if r.records_per_s]
    summary: dict[str, Any] = {
        "records_source": data.note,
        "records_produced": load.produced,
        "producer_rate_records_per_s": load.profile.records_per_s,
        "producers": [
            {
                "burst": b.name,
                "records": b.records,
                "exit_code": b.exit_code,
                "seconds": round(b.seconds, 1),
            }
            for b in load.finished
        ],
        "records_scored": counts.rows,
        "distinct_request_ids": counts.distinct_requests,
        "distinct_record_ids": counts.distinct_records,
        "every_record_scored_once": (
            counts.rows == counts.distinct_requests == load.produced and load.produced > 0
        ),
        "duration_s": round(elapsed, 1),
        "rate_records_per_s_overall": round(counts.rows / elapsed, 1) if elapsed else None,
        "rate_records_per_s_peak": round(max(rates), 1) if rates else None,
        "end_to_end_ms": {
            "what": "producer publish -> durable result (consumer histogram, all processes)",
            "p50": _round_ms(e2e.quantile(0.5)),
            "p95": _round_ms(e2e.quantile(0.95)),
            "p99": _round_ms(e2e.quantile(0.99)),
            "count": int(e2e.count),
        },
        "consumer_processing_ms": {
            "what": "received_at -> scored_at per record (results store timestamps)",
            **(
                {
                    "p50": round(float(np.percentile(processing, 50)), 2),
                    "p99": round(float(np.percentile(processing, 99)), 2),
                }
                if processing.size
                else {}
            ),
        },
        "peak_queue_depth": stats.peak_depth,
        "peak_ready_live": stats.peak_ready_live,
        "peak_desired_replicas": stats.peak_desired,
        "peak_running_replicas": stats.peak_running,
        "scaled_above_one": stats.scaled_above_one,
        "returned_to_zero": stats.returned_to_zero,
        "consumer_starts": supervisor.starts,
        "consumer_restarts_after_crash": supervisor.restarts,
        "consumer_exit_codes": sorted(set(supervisor.exit_codes)),
        "autoscaling": asdict(config),
        "consumer": asdict(demo_values.consumer),
        "overrides": demo_values.override_lines,
    }
    if data.path is not None:
        auc = auc_against_labels(
            predictions.probabilities_by_record(), labels_from_dataset(data.path)
        )
        if auc is not None:
            summary["auc"] = {"value": round(auc[0], 4), "records": auc[1]}
    (run_dir / "summary.json").write_text(
        json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8"
    )
    return summary


def _round_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _print_summary(console: Console, summary: Mapping[str, Any], run_dir: Path) -> None:
    e2e, proc = summary["end_to_end_ms"], summary["consumer_processing_ms"]
    ok = "[green]yes[/]" if summary["every_record_scored_once"] else "[red]NO[/]"
    lines = [
        f"records    {summary['records_scored']:,} scored of {summary['records_produced']:,} "
        f"produced ({summary['records_source']})",
        f"exactly once  {ok}  (rows {summary['records_scored']:,}, distinct request ids "
        f"{summary['distinct_request_ids']:,})",
        f"time       {summary['duration_s']} s; {summary['rate_records_per_s_overall']} records/s "
        f"overall (pauses included), peak {summary['rate_records_per_s_peak']} records/s",
        f"latency    publish->stored p50 {e2e['p50']} ms, p95 {e2e['p95']} ms, p99 {e2e['p99']} ms"
        f"; in-consumer p50 {proc.get('p50')} ms, p99 {proc.get('p99')} ms",
        f"load       {_producers_text(summary)}",
        f"scaling    peak depth {summary['peak_queue_depth']:,} (management API, ready+unacked; "
        f"live AMQP ready peak {_count(summary['peak_ready_live'])}), peak replicas "
        f"{summary['peak_running_replicas']} (desired {summary['peak_desired_replicas']}), "
        f"back to 0: {summary['returned_to_zero']}",
    ]
    if "auc" in summary:
        lines.append(
            f"AUC        {summary['auc']['value']} on {summary['auc']['records']:,} "
            "labelled records"
        )
    lines.append(
        f"run folder {run_dir}: timeline.csv, timeline.png, predictions.sqlite, "
        "summary.json, decisions.csv, consumers/*.log"
    )
    console.rule("summary")
    for line in lines:
        console.print(line)
    (run_dir / "summary.md").write_text(
        "\n".join(f"- {_strip_markup(line)}" for line in lines) + "\n", encoding="utf-8"
    )


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _producers_text(summary: Mapping[str, Any]) -> str:
    rate = summary["producer_rate_records_per_s"]
    parts = [
        f"{p['burst']} {p['records']:,} in {p['seconds']} s (exit {p['exit_code']})"
        for p in summary["producers"]
    ]
    return f"producer --rate {rate:g}: " + ("; ".join(parts) or "no burst finished")


def _bursts_text(bursts: Sequence[Burst]) -> str:
    sizes = sorted({b.records for b in bursts})
    return "/".join(f"{n:,}" for n in sizes)


def plan_bursts(profile: LoadProfile, data: DataChoice, records_dir: Path) -> list[Burst]:
    """The bursts of the profile; with a data file, each gets its own slice of the rows."""
    sizes = profile.bursts
    delays = [0.0] + [profile.pause_s] * (len(sizes) - 1)
    names = [f"burst {i}" for i in range(1, len(sizes) + 1)]
    if data.path is None:
        return [
            Burst(n, r, d, None, "synthetic") for n, r, d in zip(names, sizes, delays, strict=True)
        ]
    files = write_burst_files(data.path, sizes, records_dir)
    return [
        Burst(n, r, d, path, rows)
        for n, r, d, (path, rows) in zip(names, sizes, delays, files, strict=True)
    ]


def describe_load(profile: LoadProfile, bursts: Sequence[Burst]) -> str:
    """`burst 1: 15,000 (rows 1-15,000) at 500/s -> pause 45 s -> burst 2: ...`."""
    parts = []
    for index, burst in enumerate(bursts):
        if index:
            parts.append(f"pause {burst.delay_s:g} s")
        parts.append(
            f"{burst.name}: {burst.records:,} ({burst.rows}) at {profile.records_per_s:g}/s"
        )
    return " -> ".join(parts)


def _strip_markup(text: str) -> str:
    from rich.text import Text

    return Text.from_markup(text).plain
