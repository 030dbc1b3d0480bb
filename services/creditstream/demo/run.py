"""`creditstream demo`: broker check, per-run queues, burst/pause/burst load, local KEDA rule.

Isolation: every run declares its own exchange and queues, named `creditstream.demo.<run id>.*`,
and deletes them at the end (also on Ctrl-C), so leftovers of other runs cannot leak in and
nothing of this run lingers. Children run in their own session: Ctrl-C reaches only the demo,
which then SIGTERMs the consumers (they drain) and the producers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
from rich.console import Console
from rich.live import Live

from creditstream.autoscale.queue_depth import (
    FallbackDepthReader,
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

log = logging.getLogger(__name__)

CHART_VALUES: Final = REPO_ROOT / "charts" / "creditstream" / "values.yaml"
E2E_HISTOGRAM: Final = "creditstream_end_to_end_seconds"

# NOTE: the chart's cooldown (60 s) and scale-down window (60 s) would stretch the demo past
# 5 minutes; these are layered on the chart values like `helm --set` and printed at start.
DEMO_OVERRIDES: Final[Mapping[str, Any]] = {
    "autoscaling": {
        "cooldownPeriod": 20,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 15}},
    }
}
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


class DemoError(RuntimeError):
    """The demo cannot start (with a message that says what to do)."""


@dataclass(frozen=True)
class LoadProfile:
    """Burst, pause, burst: enough to wake the consumers twice and scale them past one."""

    first_burst: int = 15_000
    pause_s: float = 45.0
    second_burst: int = 15_000
    rate: float | None = None


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


def demo_settings(base: Settings, run_id: str, run_dir: Path) -> Settings:
    """Per-run exchange/queues and a per-run SQLite results store."""
    prefix = f"creditstream.demo.{run_id}"
    return base.model_copy(
        update={
            "requests_exchange": f"{prefix}.requests",
            "requests_queue": f"{prefix}.requests",
            "dead_letter_exchange": f"{prefix}.dead",
            "dead_letter_queue": f"{prefix}.dead",
            "database_url": _secret(f"sqlite:///{run_dir / 'predictions.sqlite'}"),
            "database_schema": None,
            "run_id": run_id,
        }
    )


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


def declare_topology(settings: Settings) -> None:
    """Create this run's exchanges and queues before anyone publishes."""
    import pika

    from creditstream.topology import Topology

    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url.get_secret_value()))
    try:
        Topology.from_settings(settings).declare(connection.channel())
    finally:
        connection.close()


def delete_topology(settings: Settings) -> None:
    """Remove this run's exchanges and queues (best effort)."""
    import pika
    import pika.exceptions

    try:
        connection = pika.BlockingConnection(
            pika.URLParameters(settings.amqp_url.get_secret_value())
        )
    except pika.exceptions.AMQPError:
        log.warning("could not connect to delete the demo queues")
        return
    try:
        for queue in (settings.requests_queue, settings.dead_letter_queue):
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.channel().queue_delete(queue)
        for exchange in (settings.requests_exchange, settings.dead_letter_exchange):
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.channel().exchange_delete(exchange)
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def load_autoscaling(
    overrides: list[Mapping[str, Any]], queue: str
) -> tuple[AutoscalingConfig, list[str]]:
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
    return with_queue(config, queue), lines


@dataclass
class _Producer:
    name: str
    records: int
    popen: subprocess.Popen[bytes]
    log: IO[bytes]


class LoadDriver:
    """Runs the burst/pause/burst profile as `creditstream produce` subprocesses."""

    def __init__(
        self, settings: Settings, profile: LoadProfile, data: DataChoice, run_dir: Path
    ) -> None:
        self.settings = settings
        self.profile = profile
        self.data = data
        self.run_dir = run_dir
        self.started: float | None = None
        self.active: _Producer | None = None
        self.finished: list[tuple[str, int, int]] = []  # (name, records, exit code)
        self._plan = [("burst 1", profile.first_burst, 0.0)]
        if profile.second_burst:
            self._plan.append(("burst 2", profile.second_burst, profile.pause_s))
        self._next_at = 0.0

    def _start(self, name: str, records: int) -> _Producer:
        run_id = f"{self.settings.run_id}-{name.replace(' ', '')}"
        command = [
            sys.executable,
            "-m",
            "creditstream.cli",
            "produce",
            "--limit",
            str(records),
            "--run-id",
            run_id,
            "--no-progress",
        ]
        if self.data.path is None:
            command.append("--synthetic")
        else:
            command += ["--data", str(self.data.path)]
        if self.profile.rate:
            command += ["--rate", str(self.profile.rate)]
        env = dict(os.environ)
        env.update(settings_env(self.settings))
        handle = (self.run_dir / f"producer-{name.replace(' ', '')}.log").open("ab")
        popen = subprocess.Popen(
            command,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return _Producer(name, records, popen, handle)

    def poll(self, now: float) -> str:
        """Advance the profile; return the current phase label."""
        if self.started is None:
            self.started = now
        if self.active is not None:
            code = self.active.popen.poll()
            if code is None:
                return self.active.name
            self.active.log.close()
            self.finished.append((self.active.name, self.active.records, code))
            self.active = None
            if self._plan:
                self._next_at = now + self._plan[0][2]
        if self._plan and now >= self._next_at:
            name, records, _ = self._plan.pop(0)
            self.active = self._start(name, records)
            return name
        return "pause" if self._plan else "drain"

    @property
    def done(self) -> bool:
        """All bursts sent (or failed)."""
        return self.active is None and not self._plan

    @property
    def produced(self) -> int:
        """Records confirmed by producers that exited 0."""
        return sum(records for _, records, code in self.finished if code == 0)

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
    settings = demo_settings(base, run_id, run_dir)
    data = choose_data(base, allow_download=options.allow_download)
    config, override_lines = load_autoscaling(options.set_overrides, settings.requests_queue)

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
    console.print(
        f"load       burst {options.profile.first_burst:,} -> pause "
        f"{options.profile.pause_s:g} s -> burst {options.profile.second_burst:,}"
    )
    console.print(f"rule       chart values {CHART_VALUES.relative_to(REPO_ROOT)}")
    for line in config.describe():
        console.print(f"           {line}")
    console.print("overrides  " + "\n           ".join(override_lines))
    console.print(f"run folder {run_dir}   (bounded: at most {options.max_duration_s:g} s)")

    declare_topology(settings)
    dead_reader = PassiveDeclareReader(amqp_url, settings.dead_letter_queue)
    supervisor = Supervisor(settings, log_dir=run_dir / "consumers")
    scaler = KedaHpaAutoscaler(config, created_at=0.0)
    load = LoadDriver(settings, options.profile, data, run_dir)
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
        override_lines,
    )
    predictions.close()
    if writer.rows:
        stats = summarize_timeline(writer.rows)
        plot_timeline(
            writer.rows,
            run_dir / "timeline.png",
            title=f"creditstream demo {run_id}: queue depth drives consumer replicas",
            subtitle=f"{data.kind}; KEDA rule value={config.value:g}, "
            f"max={config.max_replica_count}, cooldown="
            f"{config.cooldown_period_s:g}s; peak {stats.peak_running} "
            f"replicas, {summary['records_scored']:,} records",
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
    override_lines: list[str],
) -> dict[str, Any]:
    counts = predictions.counts()
    stats = summarize_timeline(rows)
    e2e = latency.total()
    processing = predictions.processing_latencies_ms()
    rates = [r.records_per_s for r in rows if r.records_per_s]
    summary: dict[str, Any] = {
        "records_source": data.note,
        "records_produced": load.produced,
        "producers": [{"burst": n, "records": r, "exit_code": c} for n, r, c in load.finished],
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
        "peak_desired_replicas": stats.peak_desired,
        "peak_running_replicas": stats.peak_running,
        "scaled_above_one": stats.scaled_above_one,
        "returned_to_zero": stats.returned_to_zero,
        "consumer_starts": supervisor.starts,
        "consumer_restarts_after_crash": supervisor.restarts,
        "consumer_exit_codes": sorted(set(supervisor.exit_codes)),
        "autoscaling": asdict(config),
        "overrides": override_lines,
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
        f"scaling    peak depth {summary['peak_queue_depth']:,}, peak replicas "
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


def _strip_markup(text: str) -> str:
    from rich.text import Text

    return Text.from_markup(text).plain
