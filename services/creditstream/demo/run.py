"""`creditstream demo`: broker check, per-run queues, burst/pause/burst load, local KEDA rule.

Isolation: every run declares its own exchanges and queues, named `creditstream.demo.<run id>.*`,
and deletes them at the end (also on Ctrl-C), so leftovers of other runs cannot leak in and
nothing of this run lingers. Children run in their own session: Ctrl-C reaches only the demo,
which then SIGTERMs the consumers (they drain) and the producers.

Load: each burst is published at a fixed rate (demo/load.py) into a queue nobody consumes: the
rule wakes one consumer, the backlog built meanwhile makes it add more (QueueLength), the
publish rate keeps them while the producer runs (MessageRate), and after the burst the rule
steps back down to zero. One consumer with the chart's knobs outruns the producer several
times, so the backlog drains within about a second of the first consumer being ready.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

from rich.console import Console
from rich.live import Live

from creditstream.autoscale.queue_depth import (
    AMQP_SOURCE,
    FallbackDepthReader,
    PassiveDeclareReader,
    QueueDepthError,
    depth_reader_for,
)
from creditstream.autoscale.rule import KedaHpaAutoscaler
from creditstream.demo.dashboard import DemoSample, plain_line, render
from creditstream.demo.load import (
    Burst,
    DataChoice,
    LoadDriver,
    LoadProfile,
    bursts_text,
    describe_load,
    plan_bursts,
)
from creditstream.demo.publish_tap import PublishTap
from creditstream.demo.summary import BurstTiming, build_summary, write_summary
from creditstream.demo.values import CHART_VALUES, DemoValues, load_demo_values
from creditstream.harness.isolation import isolated_run
from creditstream.harness.keda import KedaTick, LocalKeda, QueueTrigger
from creditstream.harness.metrics import HistogramAggregator
from creditstream.harness.results import ResultsReader
from creditstream.harness.supervisor import Supervisor
from creditstream.preflight import START_RABBITMQ
from creditstream.redaction import redact
from creditstream.settings import REPO_ROOT, Settings
from creditstream.timeline import TimelineRow, TimelineWriter, plot_timeline, summarize_timeline
from creditstream.topology import isolated_names

E2E_HISTOGRAM: Final = "creditstream_end_to_end_seconds"
LATENCY_WINDOW_S: Final = 5.0
STATS_WAIT_S: Final = 15.0

MANAGEMENT_MISSING_HELP: Final = (
    "management API not reachable at {where}: using the AMQP passive-declare count (ready only, "
    "labelled `amqp-passive-declare` in the plot). Enable it with "
    "`sudo rabbitmq-plugins enable rabbitmq_management`."
)


@dataclass
class DemoOptions:
    """Knobs of one demo run."""

    profile: LoadProfile = field(default_factory=LoadProfile)
    max_duration_s: float = 270.0
    tick_s: float = 1.0
    runs_dir: Path = REPO_ROOT / "runs"
    set_overrides: list[Any] = field(default_factory=list)
    allow_download: bool = True
    dashboard: bool | None = None


@dataclass(frozen=True)
class DemoPlan:
    """What a run will do: its id and folder, the rule and knobs, the records and bursts."""

    run_id: str
    run_dir: Path
    values: DemoValues
    data: DataChoice
    bursts: list[Burst]

    @property
    def prefix(self) -> str:
        """Its exchanges and queues are PREFIX.*."""
        return f"creditstream.demo.{self.run_id}"

    def plot(self, rows: list[TimelineRow], summary: Mapping[str, Any], rate: float) -> None:
        """timeline.png of the run."""
        config = self.values.autoscaling
        plot_timeline(
            rows,
            self.run_dir / "timeline.png",
            title=f"creditstream demo {self.run_id}: queue depth and publish rate drive "
            "consumer replicas",
            subtitle=f"{self.data.kind}, {len(self.bursts)} x {bursts_text(self.bursts)} records "
            f"at {rate:g}/s; QueueLength value={config.value:g}, MessageRate value="
            f"{config.message_rate or 0:g}/s, max={config.max_replica_count}, "
            f"cooldown={config.cooldown_period_s:g}s; consumer batch "
            f"{self.values.consumer.batch_size}; peak {summarize_timeline(rows).peak_running} "
            f"replicas; {summary['records_scored']:,} records scored",
        )


def plan_run(base: Settings, options: DemoOptions) -> DemoPlan:
    """A new run folder, the chart values with overrides, the records and the bursts."""
    run_id = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = options.runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    queue = isolated_names(f"creditstream.demo.{run_id}")["requests_queue"]
    values = load_demo_values(options.set_overrides, queue)
    data = choose_data(base, allow_download=options.allow_download)
    return DemoPlan(
        run_id, run_dir, values, data, plan_bursts(options.profile, data, run_dir / "records")
    )


def run_demo(base: Settings, options: DemoOptions, console: Console | None = None) -> int:
    """The whole demo; returns the exit code (0 when every produced record was scored once)."""
    console = console or Console()
    problem = startup_problem(base)
    if problem is not None:
        console.print(f"[red]{problem}[/]")
        return 2
    plan = plan_run(base, options)
    with isolated_run(
        base,
        plan.prefix,
        sqlite_file=plan.run_dir / "predictions.sqlite",
        keep_store=True,  # NOTE: the run folder keeps its predictions
        run_id=plan.run_id,
        **asdict(plan.values.consumer),
    ) as settings:
        console.rule(f"creditstream demo {plan.run_id}")
        reader = open_depth_reader(console, settings, plan.values.autoscaling.protocol)
        print_plan(console, base, plan, options)
        wait_for_statistics(console, reader)
        load = LoadDriver(settings, options.profile, plan.bursts, plan.run_dir)
        loop = DemoLoop(settings, plan.values, reader, load, plan.run_dir)
        header = f"creditstream demo — {plan.data.kind} — rule: chart values + printed overrides"
        try:
            outcome = loop.run(options, console, header)
        finally:
            # NOTE: the burst files are copies of data-set rows; the run folder keeps no data.
            shutil.rmtree(plan.run_dir / "records", ignore_errors=True)
        summary = loop.summary(plan.data, plan.values)
        loop.close()
    if loop.timeline.rows:
        plan.plot(loop.timeline.rows, summary, options.profile.records_per_s)
    write_summary(console, summary, plan.run_dir)
    if outcome == "interrupted":
        return 130
    return 0 if outcome == "settled" and summary["every_record_scored_once"] else 1


def startup_problem(base: Settings) -> str | None:
    """Why the demo cannot start (no broker, no model), with what to do; None when it can."""
    from creditstream.broker import BROKER_DOWN_ERRORS, connect, connection_parameters

    try:
        connect(base, name="creditstream-demo", wait_s=0).close()
    except BROKER_DOWN_ERRORS as exc:
        params = connection_parameters(base, name="creditstream-demo")
        return (
            f"RabbitMQ is not reachable at {params.host}:{params.port} ({type(exc).__name__}).\n"
            f"Start one, then run `make demo` again:\n{START_RABBITMQ}"
        )
    if not base.model_path.is_file():
        return (
            f"no model at {base.model_path}: run `make train` (or `creditstream train`), "
            "or set CREDITSTREAM_MODEL_PATH."
        )
    return None


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


def open_depth_reader(console: Console, settings: Settings, protocol: str) -> FallbackDepthReader:
    """The trigger's depth reader; without a management API, the labelled AMQP fallback."""
    reader = depth_reader_for(settings, settings.requests_queue, protocol=protocol)
    source = f"management API {reader.primary.endpoint}" if reader.primary else "AMQP"
    console.print(
        f"broker     {redact(settings.amqp_url.get_secret_value())}  (queue depth via {source})"
    )
    if reader.primary is not None and not reader.primary.ping():
        console.print("[yellow]" + MANAGEMENT_MISSING_HELP.format(where=reader.primary.endpoint))
        reader = FallbackDepthReader(None, reader.fallback)
    return reader


def print_plan(console: Console, base: Settings, plan: DemoPlan, options: DemoOptions) -> None:
    """Model, records, load, rule and overrides, as the run will use them."""
    console.print(f"model      {base.model_path}")
    console.print(f"records    {plan.data.note}")
    console.print("load       " + describe_load(options.profile, plan.bursts))
    console.print(f"rule       chart values {CHART_VALUES.relative_to(REPO_ROOT)}")
    for line in plan.values.autoscaling.describe():
        console.print(f"           {line}")
    console.print(f"consumer   {plan.values.consumer.describe()}  (chart consumer.* + overrides)")
    console.print("overrides  " + "\n           ".join(plan.values.override_lines))
    console.print(f"run folder {plan.run_dir}   (bounded: at most {options.max_duration_s:g} s)")


def wait_for_statistics(console: Console, reader: FallbackDepthReader) -> None:
    """Start the load only once the management API counts the new queue.

    NOTE: a queue declared a moment ago has no `messages` yet (collect_statistics_interval,
    5 s by default); waiting for them keeps the trigger metric one source all along.
    """
    if reader.primary is None:
        return
    started = time.monotonic()
    while time.monotonic() - started < STATS_WAIT_S:
        try:
            reader.primary.read()
        except QueueDepthError:
            time.sleep(0.5)
        else:
            waited = time.monotonic() - started
            console.print(f"stats      management API counts the new queue after {waited:.1f} s")
            return
    console.print(
        f"[yellow]stats      no management statistics for the new queue after "
        f"{STATS_WAIT_S:g} s: the AMQP ready count (labelled) stands in until they come[/]"
    )


class DemoLoop:
    """One tick a second: load -> LocalKeda -> sample -> timeline + dashboard, until settled."""

    def __init__(
        self,
        settings: Settings,
        values: DemoValues,
        reader: FallbackDepthReader,
        load: LoadDriver,
        run_dir: Path,
    ) -> None:
        # NOTE: protocol http never falls back to the AMQP count mid-run (KEDA does not): a
        # failed management API reading is "metric unavailable" and the rule changes nothing.
        trigger = QueueTrigger(reader.primary if reader.primary is not None else reader.fallback)
        self.supervisor = Supervisor(settings, run_dir / "consumers")
        rule = KedaHpaAutoscaler(values.autoscaling, created_at=0.0)
        self.keda = LocalKeda(rule, self.supervisor, trigger)
        self.load = load
        self.monitor = Monitor(settings, trigger, reader)
        self.run_log = RunLog(run_dir / "decisions.csv")
        self.timeline = TimelineWriter(run_dir / "timeline.csv")
        self.tap = PublishTap(settings)
        self.bursts: dict[str, BurstTiming] = {}
        self.zero_during_burst: list[float] = []
        self.elapsed_s = 0.0

    def tick(self, t: float, now: float) -> DemoSample:
        """One pass; `t`: seconds since the start, `now`: the monotonic clock."""
        phase = self.load.poll(t)
        if self.load.active is not None and phase not in self.bursts:
            self.bursts[phase] = BurstTiming(phase, self.load.burst_run_id(phase), time.time())
        self._note_first_ready()
        tick = self.keda.tick(t)
        if self.load.active is not None:
            # The defect of issue 13: scale to zero while records are still being published.
            self.zero_during_burst += [t for d in tick.decisions if d.desired == 0 < d.current]
        self.run_log.record(tick)
        row = self.monitor.sample(now, tick, self.keda, phase)
        self.timeline.write(row)
        return DemoSample(
            row, self.supervisor.draining, self.load.sending, self.run_log.last_decision
        )

    def _note_first_ready(self) -> None:
        """When the running burst's first consumer answered /readyz (epoch seconds)."""
        if self.load.active is None:
            return
        burst = self.bursts.get(self.load.active[0].name)
        if burst is None or burst.first_ready_at is not None:
            return
        if any(process.ready() for process in self.supervisor.alive()):
            burst.first_ready_at = time.time()

    def _wait_until(self, deadline: float) -> None:
        """Sleep to the next tick; meanwhile watch for the burst's first ready consumer."""
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))
            self._note_first_ready()

    def settled(self, sample: DemoSample) -> bool:
        """Every burst sent and stored, and the consumers back at zero."""
        return (
            self.load.done
            and (sample.row.scored_total or 0) >= self.load.produced
            and self.keda.desired == 0
            and self.supervisor.running == 0
            and self.supervisor.draining == 0
        )

    def run(self, options: DemoOptions, console: Console, header: str) -> str:
        """Tick until settled, out of time or interrupted; which of the three."""
        interactive = console.is_terminal if options.dashboard is None else options.dashboard
        live = Live(console=console, refresh_per_second=4, transient=False) if interactive else None
        t0, last_plain = time.monotonic(), -10.0
        self.tap.start()
        try:
            with _interrupt_on_sigterm(), live or contextlib.nullcontext():
                while True:
                    now = time.monotonic()
                    sample = self.tick(now - t0, now)
                    if live is not None:
                        live.update(render(sample, self.run_log.events, header))
                    elif sample.row.t_s - last_plain >= 5:
                        console.print(plain_line(sample))
                        last_plain = sample.row.t_s
                    if self.settled(sample):
                        return "settled"
                    if sample.row.t_s > options.max_duration_s:
                        console.print(f"[red]did not settle within {options.max_duration_s:g} s[/]")
                        return "timed out"
                    self._wait_until(now + options.tick_s)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopping producers, draining consumers...[/]")
            return "interrupted"
        finally:
            self.load.stop()
            self.supervisor.shutdown(timeout_s=30)
            self.tap.stop()
            self.timeline.close()
            self.run_log.close()
            self.keda.close()
            self.elapsed_s = time.monotonic() - t0

    def summary(self, data: DataChoice, values: DemoValues) -> dict[str, Any]:
        """The closing figures (before close())."""
        return build_summary(
            rows=self.timeline.rows,
            load=self.load,
            results=self.monitor.results,
            end_to_end=self.monitor.latency.total(),
            supervisor=self.supervisor,
            data=data,
            elapsed=self.elapsed_s,
            values=values,
            bursts=list(self.bursts.values()),
            sent_at=self.tap.sent_at(),
            zero_during_burst=self.zero_during_burst,
        )

    def close(self) -> None:
        """Close the monitor's readers."""
        self.monitor.close()


class Monitor:
    """What the demo shows beside the rule: throughput, latency, dead letters, ready count."""

    def __init__(self, settings: Settings, trigger: QueueTrigger, reader: FallbackDepthReader):
        self.results = ResultsReader(settings)
        self.latency = HistogramAggregator()
        self._trigger = trigger
        self._reader = reader
        self._dead = PassiveDeclareReader(settings, settings.dead_letter_queue)
        self._window: deque[tuple[float, Any]] = deque()
        self._previous: tuple[int, float] | None = None

    def sample(self, now: float, tick: KedaTick, keda: LocalKeda, phase: str) -> TimelineRow:
        """The timeline row of this tick (`now`: monotonic clock, tick.at: seconds of the run)."""
        count = self.results.count()
        previous_count, previous_now = self._previous or (0, now - 1.0)
        self._previous = (count, now)
        p50, p99 = self._window_latency(keda.supervisor, tick.at)
        depth = self._trigger.last
        return TimelineRow(
            t_s=tick.at,
            queue_depth=None if depth is None else depth.messages,
            depth_source=depth.source if depth else "unavailable",
            desired_replicas=tick.desired,
            running_replicas=keda.supervisor.running,
            records_per_s=(count - previous_count) / max(now - previous_now, 1e-6),
            p50_ms=p50,
            p99_ms=p99,
            dead_lettered=self._count(self._dead),
            scored_total=count,
            phase=phase,
            ready_live=(
                depth.ready
                if depth is not None and depth.source == AMQP_SOURCE
                else self._count(self._reader.fallback)
            ),
            publish_rate=tick.sample.publish_rate,
        )

    @staticmethod
    def _count(reader: PassiveDeclareReader) -> int | None:
        try:
            return reader.read().ready
        except QueueDepthError:
            return None

    def _window_latency(self, supervisor: Supervisor, t: float) -> tuple[float | None, ...]:
        """p50/p99 ms of publish -> stored over the last few seconds, all processes summed."""
        for process in supervisor.alive():
            if process.scrape(timeout_s=0.5) is not None:
                self.latency.update(process.index, process.last_metrics.histogram(E2E_HISTOGRAM))
        total = self.latency.total()
        self._window.append((t, total))
        while len(self._window) > 1 and self._window[0][0] < t - LATENCY_WINDOW_S:
            self._window.popleft()
        recent = total - self._window[0][1] if len(self._window) > 1 else total
        return tuple(None if q is None else q * 1000 for q in map(recent.quantile, (0.5, 0.99)))

    def close(self) -> None:
        """Close the readers."""
        self._dead.close()
        self._reader.close()
        self.results.close()


class RunLog:
    """decisions.csv and the event list: every rule decision and supervisor event of the run."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("w", encoding="utf-8")
        self._file.write("t_s,loop,messages,publish_rate,active,current,desired,reason\n")
        self.events: list[str] = []
        self.last_decision = "-"

    def record(self, tick: KedaTick) -> None:
        """Append the tick's decisions and events."""
        t = tick.at
        for d in tick.decisions:
            self._file.write(
                f"{t:.2f},{d.loop},{_num(d.sample.messages)},{_num(d.sample.publish_rate)},"
                f"{d.active},{d.current},{d.desired},{d.reason}\n"
            )
            if d.desired != d.current:
                self.last_decision = f"{d.loop}: {d.current} -> {d.desired} ({d.reason})"
                self.events.append(
                    f"{t:6.1f}s  {self.last_decision}  [depth {_num(d.sample.messages)}, "
                    f"publish {_num(d.sample.publish_rate)}/s]"
                )
        self._file.flush()
        for event in tick.events:
            self.events.append(f"{t:6.1f}s  consumer {event.index} {event.kind} {event.detail}")

    def close(self) -> None:
        """Close decisions.csv."""
        self._file.close()


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    def _raise(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"
