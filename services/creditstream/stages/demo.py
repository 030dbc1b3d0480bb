"""`creditstream demo --pipeline staged`: the stages as local processes, each scaled by the KEDA
rule on its own queue (issue 11).

The same pieces as the fused demo: the chart's autoscaling values (plus the demo's overrides),
one `LocalKeda` per stage (queue reading → KEDA + HPA rule → a `Supervisor` of `creditstream
stage S` processes), an isolated run (own queues, own SQLite store), a burst / pause / burst load
of raw CSV rows. Each tick writes one timeline row with every stage's depth and replicas; the run
ends when every record is stored and every stage is back at zero replicas.
"""

from __future__ import annotations

import contextlib
import csv
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from creditstream.autoscale.queue_depth import depth_reader_for
from creditstream.autoscale.rule import KedaHpaAutoscaler, with_queue
from creditstream.demo.values import load_demo_values
from creditstream.harness.isolation import isolated_run
from creditstream.harness.keda import LocalKeda, QueueTrigger
from creditstream.harness.processes import Process, ProcessGroup
from creditstream.harness.results import ResultsReader
from creditstream.harness.supervisor import Supervisor
from creditstream.settings import REPO_ROOT, Settings
from creditstream.stages.topology import STAGES, declare_stages, delete_stages, stage_queue


@dataclass
class StagedDemoOptions:
    """Knobs of one staged demo run."""

    first_burst: int = 6_000
    second_burst: int = 6_000
    pause_s: float = 30.0
    rate: float = 400.0
    max_duration_s: float = 360.0
    tick_s: float = 1.0
    runs_dir: Path = REPO_ROOT / "runs"
    set_overrides: list[Any] = field(default_factory=list)
    dashboard: bool | None = None


@dataclass
class StageScaler:
    """One stage: its queue, its supervisor and its local KEDA."""

    stage: str
    queue: str
    supervisor: Supervisor
    keda: LocalKeda
    peak: int = 0


@dataclass
class _Load:
    """Burst / pause / burst of `creditstream produce --pipeline staged`, as child processes."""

    group: ProcessGroup
    data: Path
    options: StagedDemoOptions
    run_id: str
    started: list[tuple[str, Process]] = field(default_factory=list)

    @property
    def produced(self) -> int:
        return sum(n for n, _ in self._plan()[: len(self.started)])

    def _plan(self) -> list[tuple[int, float]]:
        first = (self.options.first_burst, 0.0)
        second_at = self.options.first_burst / self.options.rate + self.options.pause_s
        bursts = [first]
        if self.options.second_burst:
            bursts.append((self.options.second_burst, second_at))
        return bursts

    def poll(self, t: float) -> str:
        plan = self._plan()
        while len(self.started) < len(plan) and t >= plan[len(self.started)][1]:
            n = plan[len(self.started)][0]
            name = f"burst{len(self.started) + 1}"
            args = ["produce", "--pipeline", "staged", "--data", str(self.data), "--limit", str(n)]
            args += ["--rate", f"{self.options.rate:g}", "--run-id", f"{self.run_id}-{name}"]
            self.started.append((name, self.group.start([*args, "--no-progress"], name=name)))
        if any(p.alive for _, p in self.started):
            return self.started[-1][0]
        return "pause" if len(self.started) < len(plan) else "drain"

    @property
    def done(self) -> bool:
        return len(self.started) == len(self._plan()) and not any(p.alive for _, p in self.started)

    def failed(self) -> list[str]:
        return [name for name, p in self.started if p.poll() not in (None, 0)]


def run_staged_demo(
    base: Settings, options: StagedDemoOptions, console: Console | None = None
) -> int:
    """The whole staged demo; 0 when every record is stored once and every stage is at 0."""
    console = console or Console()
    from creditstream.demo.run import startup_problem

    problem = startup_problem(base)
    if problem is not None:
        console.print(f"[red]{problem}[/]")
        return 2
    if not base.data_path.is_file():
        console.print(f"[red]the staged demo reads raw CSV rows: no data set at {base.data_path}")
        return 2
    run_id = datetime.now().strftime("staged-%Y%m%d-%H%M%S")
    run_dir = options.runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"creditstream.demo.{run_id}"
    values = load_demo_values(options.set_overrides, f"{prefix}.stage.<stage>")
    with isolated_run(
        base,
        prefix,
        sqlite_file=run_dir / "predictions.sqlite",
        keep_store=True,
        run_id=run_id,
        **asdict(values.consumer),
    ) as settings:
        declare_stages(settings)
        console.rule(f"creditstream staged demo {run_id}")
        for line in values.autoscaling.describe():
            console.print(f"rule       {line}")
        console.print("overrides  " + "\n           ".join(values.override_lines))
        scalers = []
        for stage in STAGES:
            queue = stage_queue(settings, stage)
            config = with_queue(values.autoscaling, queue)
            supervisor = Supervisor(settings, run_dir / stage, args=("stage", stage))
            trigger = QueueTrigger(depth_reader_for(settings, queue, protocol=config.protocol))
            keda = LocalKeda(KedaHpaAutoscaler(config, created_at=0.0), supervisor, trigger)
            scalers.append(StageScaler(stage, queue, supervisor, keda))
        group = ProcessGroup(run_dir / "producers", settings)
        load = _Load(group, base.data_path, options, run_id)
        try:
            outcome, rows = _loop(settings, scalers, load, options, console, run_dir)
        finally:
            group.stop_all(timeout_s=5)
            delete_stages(settings)  # NOTE: isolated_run removes the fused names only
        with ResultsReader(settings) as results:
            summary_rows = results.summary()
    summary = {
        "run_id": run_id,
        "outcome": outcome,
        "records_produced": load.produced,
        "records_stored": summary_rows.rows,
        "distinct_request_ids": summary_rows.distinct_requests,
        "every_record_stored_once": summary_rows.rows
        == summary_rows.distinct_requests
        == load.produced,
        "producer_failures": load.failed(),
        "peak_replicas": {s.stage: s.peak for s in scalers},
        "final_replicas": {s.stage: s.supervisor.running for s in scalers},
        "restarts": {s.stage: s.supervisor.restarts for s in scalers},
        "ticks": len(rows),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if rows:
        plot_stages(rows, run_dir / "timeline.png", run_id, summary)
    console.print_json(json.dumps(summary))
    settled = outcome == "settled" and summary["every_record_stored_once"]
    return 0 if settled else 1


def _loop(
    settings: Settings,
    scalers: list[StageScaler],
    load: _Load,
    options: StagedDemoOptions,
    console: Console,
    run_dir: Path,
) -> tuple[str, list[dict[str, Any]]]:
    columns = ["t_s", "phase", "stored"] + [
        f"{s.stage}_{k}" for s in scalers for k in ("depth", "desired", "running")
    ]
    rows: list[dict[str, Any]] = []
    interactive = console.is_terminal if options.dashboard is None else options.dashboard
    live = Live(console=console, refresh_per_second=4) if interactive else None
    handle: IO[str] = (run_dir / "timeline.csv").open("w", newline="", encoding="utf-8")
    writer = csv.DictWriter(handle, fieldnames=columns)
    writer.writeheader()
    results = ResultsReader(settings)
    t0, last_plain, outcome = time.monotonic(), -10.0, "timed out"
    try:
        with live or contextlib.nullcontext():
            while True:
                now = time.monotonic()
                t = now - t0
                phase = load.poll(t)
                row: dict[str, Any] = {"t_s": round(t, 2), "phase": phase}
                for s in scalers:
                    tick = s.keda.tick(t)
                    s.peak = max(s.peak, s.supervisor.running)
                    depth = s.keda.trigger.last
                    row[f"{s.stage}_depth"] = None if depth is None else depth.messages
                    row[f"{s.stage}_desired"] = tick.desired
                    row[f"{s.stage}_running"] = s.supervisor.running
                row["stored"] = results.count()
                rows.append(row)
                writer.writerow(row)
                handle.flush()
                if live is not None:
                    live.update(_table(row, scalers))
                elif t - last_plain >= 5:
                    console.print(_plain(row, scalers))
                    last_plain = t
                if (
                    load.done
                    and row["stored"] >= load.produced
                    and all(
                        s.keda.desired == 0
                        and s.supervisor.running == 0
                        and s.supervisor.draining == 0
                        for s in scalers
                    )
                ):
                    outcome = "settled"
                    break
                if t > options.max_duration_s:
                    console.print(f"[red]did not settle within {options.max_duration_s:g} s[/]")
                    break
                time.sleep(max(0.0, now + options.tick_s - time.monotonic()))
    except KeyboardInterrupt:
        outcome = "interrupted"
    finally:
        for s in scalers:
            s.supervisor.shutdown(timeout_s=30)
            s.keda.close()
        results.close()
        handle.close()
    return outcome, rows


def _table(row: dict[str, Any], scalers: list[StageScaler]) -> Table:
    table = Table(title=f"t={row['t_s']:.0f}s  {row['phase']}  stored {row['stored']:,}")
    for name in ("stage", "queue depth", "desired", "running"):
        table.add_column(name)
    for s in scalers:
        table.add_row(
            s.stage,
            str(row[f"{s.stage}_depth"]),
            str(row[f"{s.stage}_desired"]),
            str(row[f"{s.stage}_running"]),
        )
    return table


def _plain(row: dict[str, Any], scalers: list[StageScaler]) -> str:
    stages = "  ".join(
        f"{s.stage} depth {row[f'{s.stage}_depth']} replicas {row[f'{s.stage}_running']}"
        for s in scalers
    )
    return f"{row['t_s']:6.1f}s {row['phase']:>6}  stored {row['stored']:>6}  {stages}"


def plot_stages(
    rows: list[dict[str, Any]], path: Path, run_id: str, summary: dict[str, Any]
) -> Path:
    """One panel per stage: its queue depth and its replicas over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [k[: -len("_depth")] for k in rows[0] if k.endswith("_depth")]
    fig, axes = plt.subplots(len(stages), 1, figsize=(10, 2.6 * len(stages)), sharex=True)
    t = [r["t_s"] for r in rows]
    for ax, stage in zip(axes, stages, strict=True):
        depth = [
            r[f"{stage}_depth"] if r[f"{stage}_depth"] is not None else float("nan") for r in rows
        ]
        ax.plot(t, depth, color="tab:blue", label="queue depth")
        ax.set_ylabel(f"{stage}\nmessages")
        twin = ax.twinx()
        twin.step(
            t,
            [r[f"{stage}_running"] for r in rows],
            where="post",
            color="tab:red",
            label="replicas",
        )
        twin.set_ylabel("replicas")
        twin.set_ylim(bottom=0)
        ax.set_title(
            f"{stage}: queue depth (blue) and replicas (red), "
            f"peak {summary['peak_replicas'][stage]}",
            fontsize=9,
        )
    axes[-1].set_xlabel("seconds")
    fig.suptitle(
        f"creditstream staged demo {run_id}: each stage scaled on its own queue; "
        f"{summary['records_stored']:,} records stored",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
