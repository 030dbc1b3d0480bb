"""The benchmark driver: pre-fill, drain, time, and write the report.

Every scenario is an isolated run (creditstream.harness): its own exchanges and (quorum)
queues and its own PostgreSQL schema or SQLite file, removed afterwards. Queues are filled by
`creditstream produce` before the consumer under test starts, so producer and consumer never
share the two cores while the drain is timed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from creditstream.bench import report as bench_report
from creditstream.bench.machine import load_average, machine_info, versions
from creditstream.bench.plan import BenchPlan, ConsumerCase, Store, build_plan
from creditstream.bench.stats import DrainTiming, rate
from creditstream.harness.isolation import isolated_run, unique_tag
from creditstream.harness.processes import Process, ProcessGroup, cli_command, process_env, run_cli
from creditstream.harness.results import ResultsReader
from creditstream.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

DEFAULT_PG_URL: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
_SUMMARY = re.compile(r"produced (\d+) records in (\d+) messages in ([\d.]+) s")
_READY_POLL_S: Final = 0.02
_PROGRESS_POLL_S: Final = 0.2
_SCORED: Final = 'creditstream_records_total{outcome="scored"}'


@dataclass
class BenchContext:
    """What every scenario needs: base settings, plan, where to put logs and files."""

    base: Settings
    plan: BenchPlan
    pg_url: str
    work_dir: Path
    cache_dir: Path
    notes: list[str] = field(default_factory=list)
    say: Callable[[str], None] = print
    started: float = field(default_factory=time.monotonic)


# --- processes -----------------------------------------------------------------------------
@contextlib.contextmanager
def scenario(ctx: BenchContext, name: str, store: Store) -> Iterator[Settings]:
    """An isolated run for one scenario (its tag is the run id, for logs and message ids)."""
    tag = unique_tag(name)
    with isolated_run(
        ctx.base,
        f"creditstream.bench.{tag}",
        store=store,
        sqlite_file=ctx.work_dir / f"{tag}.sqlite",
        pg_url=ctx.pg_url,
        run_id=tag,
    ) as settings:
        yield settings


def _run(
    ctx: BenchContext, settings: Settings, log_name: str, args: list[str], **kwargs: Any
) -> tuple[int, str]:
    """Run a process to its end, stderr into WORK_DIR/LOG_NAME.log; (exit code, stdout)."""
    done = run_cli(args, settings, **kwargs)
    (ctx.work_dir / f"{log_name}.log").write_text(done.stderr)
    if not done.stdout.strip():
        tail = " | ".join(done.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"{args[0]} exited {done.returncode} without a result: {tail}")
    return done.returncode, done.stdout


def produce(
    ctx: BenchContext, settings: Settings, records: int, per_message: int
) -> dict[str, Any]:
    """`creditstream produce --synthetic` into the scenario's queue; its confirmed rate."""
    run_id = f"{settings.run_id}-{per_message}"
    args = ["produce", "--synthetic", "--limit", str(records), "--no-progress", "--run-id", run_id]
    code, out = _run(
        ctx,
        settings,
        f"{settings.run_id}-producer-{per_message}rpm",
        [*args, "--records-per-message", str(per_message)],
        timeout=max(120.0, records / 1000),
        CREDITSTREAM_LOG_FORMAT="json",
    )
    match = _SUMMARY.search(out)
    if code != 0 or match is None:
        raise RuntimeError(f"producer exited {code}: {out.strip()}")
    confirmed, messages, seconds = int(match[1]), int(match[2]), float(match[3])
    if confirmed != records:
        raise RuntimeError(f"producer confirmed {confirmed} of {records} records")
    return {
        "records": confirmed,
        "messages": messages,
        "seconds": seconds,
        "records_per_s": rate(confirmed, seconds),
        "messages_per_s": rate(messages, seconds),
    }


def _run_reference(
    ctx: BenchContext, settings: Settings, module: str, args: list[str], timeout: float
) -> dict[str, Any]:
    # NOTE: one inference thread, like creditstream's onnxruntime session: OpenMP's default (a
    # spinning thread per core) made scikit-learn ~10x slower per record on this shared 2-core
    # box, which would flatter creditstream's ratio.
    code, out = _run(
        ctx,
        settings,
        str(settings.run_id),
        args,
        timeout=timeout,
        command=[sys.executable, "-m", module],
        OMP_NUM_THREADS="1",
    )
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if result.get("first_receive") is None:
        raise RuntimeError(f"{module} received nothing")
    timing = DrainTiming(result["first_receive"], result["last_ack"], result["records"])
    return {
        "records": result["records"],
        "messages": result["messages"],
        "seconds": timing.seconds,
        "records_per_s": timing.records_per_s,
        "messages_per_s": rate(result["messages"], timing.seconds),
        "exit_code": code,
    }


# --- scenarios ------------------------------------------------------------------------------
def run_producer(ctx: BenchContext, per_message: int) -> dict[str, Any]:
    """Publish rate with confirms into a queue nobody consumes."""
    records = ctx.plan.producer_records[per_message]
    with scenario(ctx, f"producer{per_message}", "sqlite") as settings:
        figures = produce(ctx, settings, records, per_message)
    return {
        "kind": "producer",
        "label": f"producer with confirms, {per_message} rec/msg",
        "records_per_message": per_message,
        **figures,
    }


def run_ceiling(ctx: BenchContext) -> dict[str, Any]:
    """No-op consumer (decode + multi-ack) over a pre-filled quorum queue."""
    n = ctx.plan.ceiling_messages
    with scenario(ctx, "ceiling", "sqlite") as settings:
        produce(ctx, settings, n, 1)
        figures = _run_reference(
            ctx,
            settings,
            "creditstream.bench.ceiling",
            ["--expect", str(n), "--max-seconds", str(ctx.plan.drain_timeout_s)],
            timeout=ctx.plan.drain_timeout_s + 60,
        )
    error = None if figures["messages"] == n else f"drained {figures['messages']} of {n}"
    return {
        "kind": "ceiling",
        "label": "ceiling: no-op consumer (decode + multi-ack)",
        "records_per_message": 1,
        "error": error,
        **figures,
    }


def run_seed_style(ctx: BenchContext) -> dict[str, Any]:
    """The naive design, bounded in messages and seconds."""
    from creditstream.bench.seed_style import seed_style_model_path

    label = "seed-style: sklearn per record, INSERT+COMMIT per record, ack per message"
    if not ctx.base.data_path.is_file():
        return {
            "kind": "seed-style",
            "label": label,
            "skipped": f"UCI data set not found at {ctx.base.data_path} (needed to fit the "
            "scikit-learn pipeline); set CREDITSTREAM_DATA_PATH",
        }
    model = seed_style_model_path(ctx.base, ctx.cache_dir)
    n = ctx.plan.seed_style_messages
    store = bench_report.SEED_STYLE_STORE
    with scenario(ctx, "seedstyle", store) as settings:
        produce(ctx, settings, n, 1)
        figures = _run_reference(
            ctx,
            settings,
            "creditstream.bench.seed_style",
            [
                "--model",
                str(model),
                "--expect",
                str(n),
                "--max-seconds",
                str(ctx.plan.seed_style_max_s),
            ],
            timeout=ctx.plan.seed_style_max_s + 120,
        )
        stored = ResultsReader(settings).count()
    error = None if stored == figures["records"] else f"stored {stored} of {figures['records']}"
    return {
        "kind": "seed-style",
        "label": f"{label} ({store})",
        "store": store,
        "records_per_message": 1,
        "error": error,
        "note": f"bounded: first {figures['records']} of {n} queued messages or "
        f"{ctx.plan.seed_style_max_s:g} s",
        **figures,
    }


@dataclass
class Watched:
    """A consumer under test: when it first answered /readyz, and its peak resident memory."""

    process: Process
    ready_after: float | None = None
    peak_rss: int = 0

    def poll(self) -> None:
        """Readiness (cold start) and an RSS sample; raise if the process died."""
        import psutil

        if not self.process.alive:
            raise RuntimeError(
                f"consumer exited {self.process.returncode}: {self.process.log_tail()}"
            )
        if self.ready_after is None and self.process.ready():
            self.ready_after = time.monotonic() - self.process.started_at
        with contextlib.suppress(psutil.Error):
            rss = psutil.Process(self.process.pid).memory_info().rss
            self.peak_rss = max(self.peak_rss, rss)

    def peak_rss_kernel(self) -> None:
        """Fold in VmHWM, the kernel's peak resident set (/proc; Linux only)."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)


@contextlib.contextmanager
def consumers(ctx: BenchContext, settings: Settings, count: int) -> Iterator[list[Watched]]:
    """`creditstream consume` processes with ports of their own, ready (polled every 20 ms).

    On exit: SIGTERM (the consumer drains and exits 0), SIGKILL after 30 s; `codes` of the
    group then holds the exit codes.
    """
    group = ProcessGroup(ctx.work_dir, settings, stop_timeout_s=30)
    watched = [
        Watched(
            group.start(
                ["consume"],
                name=f"{settings.run_id}-consumer",
                http=True,
                CREDITSTREAM_LOG_FORMAT="json",
            )
        )
        for _ in range(count)
    ]
    try:
        deadline = time.monotonic() + 60
        while any(w.ready_after is None for w in watched):
            for w in watched:
                w.poll()
            if time.monotonic() > deadline:
                raise RuntimeError("consumer not ready within 60 s")
            time.sleep(_READY_POLL_S)
        yield watched
    finally:
        for w in watched:
            w.peak_rss_kernel()
        group.stop_all()


def run_consumer_case(ctx: BenchContext, case: ConsumerCase) -> dict[str, Any]:
    """Pre-fill, start N `creditstream consume` processes, time the drain from the store."""
    entry: dict[str, Any] = {
        "kind": "creditstream",
        "label": case.label,
        "processes": case.processes,
        "store": case.store,
        "records_per_message": case.records_per_message,
    }
    name = f"cs{case.processes}p{case.store[:2]}{case.records_per_message}"
    bounded = False
    with scenario(ctx, name, case.store) as settings:
        produce(ctx, settings, case.records, case.records_per_message)
        results = ResultsReader(settings)
        with consumers(ctx, settings, case.processes) as watched:
            deadline = time.monotonic() + ctx.plan.drain_timeout_s
            while True:
                for w in watched:
                    w.process.scrape()
                    w.poll()
                metrics = [w.process.last_metrics for w in watched]
                if sum(m[_SCORED] for m in metrics) >= case.records:
                    break
                if time.monotonic() > deadline:
                    # NOTE: bounded in time: measure what was stored so far, before stopping.
                    bounded = True
                    break
                time.sleep(_PROGRESS_POLL_S)
            store_sum = sum(m.value("creditstream_store_seconds_sum") for m in metrics)
            store_count = sum(m.value("creditstream_store_seconds_count") for m in metrics)
            partial = results.summary() if bounded else None
        codes = [w.process.returncode for w in watched]
        stored = partial or results.summary()
        results.close()
    rows = stored.rows
    mean_write = store_sum / store_count if store_count else 0.0
    drain = DrainTiming(
        stored.first_received or 0.0, (stored.last_scored or 0.0) + mean_write, rows
    )
    errors = []
    if not bounded and rows != case.records:
        errors.append(f"stored {rows} rows for {case.records} records")
    if bounded and rows == 0:
        errors.append(f"nothing stored within {ctx.plan.drain_timeout_s:g} s")
    if not bounded and any(code != 0 for code in codes):
        errors.append(f"consumer exit codes {codes} (expected 0 after SIGTERM)")
    messages = math.ceil(rows / case.records_per_message)
    entry.update(
        {
            "records": rows,
            "messages": messages,
            "seconds": drain.seconds,
            "records_per_s": drain.records_per_s,
            "messages_per_s": rate(messages, drain.seconds),
            "mean_store_write_ms": mean_write * 1000,
            "cold_start_s": max(w.ready_after or math.inf for w in watched),
            "peak_rss_mb": max(w.peak_rss for w in watched) / 2**20,
            "error": "; ".join(errors) or None,
        }
    )
    if bounded:
        entry["note"] = (
            f"bounded: {rows} of {case.records} records stored within "
            f"{ctx.plan.drain_timeout_s:g} s"
        )
        ctx.notes.append(f"{case.label}: {entry['note']}")
    return entry


def run_pipeline(ctx: BenchContext) -> dict[str, Any]:
    """Staged vs fused on the same data-set records (creditstream.stages.bench)."""
    from creditstream.stages.bench import run_staged_vs_fused

    data = ctx.base.data_path
    if not data.is_file():
        return {"kind": "pipeline", "skipped": f"no data set at {data} (raw CSV rows needed)"}
    records = ctx.plan.pipeline_records
    return run_staged_vs_fused(
        lambda name: scenario(ctx, f"pipe-{name}", "postgresql"),
        data,
        records,
        ctx.work_dir,
        timeout_s=max(120.0, records / 20),
    )


def run_latency(ctx: BenchContext) -> list[dict[str, Any]]:
    """One consumer (PostgreSQL store); PredictionClient at each offered rate."""
    from creditstream.bench.latency import measure_latency
    from creditstream.client import PredictionClient
    from creditstream.model_card import load_model_card
    from creditstream.synthetic import iter_synthetic_records

    card = load_model_card(ctx.base.resolved_model_card_path)
    records = list(iter_synthetic_records(card.document, 5_000, ctx.base.seed))
    results: list[dict[str, Any]] = []
    with (
        scenario(ctx, "latency", "postgresql") as settings,
        consumers(ctx, settings, 1),
        PredictionClient(settings, connect_wait_s=10) as client,
    ):
        client.predict_many(records[: ctx.plan.latency_warmup], timeout=30)
        for offered in ctx.plan.latency_rates:
            result = measure_latency(client, records, offered, ctx.plan.latency_duration_s)
            results.append(
                {"store": "postgresql", "duration_s": ctx.plan.latency_duration_s}
                | result.as_dict()
            )
            ctx.say(
                f"  latency at {offered:,.0f} rec/s: p50 {result.summary.p50_ms:.2f} ms, "
                f"p99 {result.summary.p99_ms:.2f} ms"
            )
    return results


def run_profile(ctx: BenchContext, case: ConsumerCase, records: int) -> dict[str, Any]:
    """Drain a pre-filled queue with one consumer under py-spy (untimed); where time goes."""
    from creditstream.bench.profile import py_spy, run_profiled

    binary = py_spy()
    if binary is None:
        return {"label": case.label, "skipped": "py-spy not installed (dev extra)"}
    name = f"prof{case.store[:2]}{case.records_per_message}"
    with scenario(ctx, name, case.store) as settings:
        produce(ctx, settings, records, case.records_per_message)
        summary = run_profiled(
            binary,
            ctx.work_dir / f"{settings.run_id}.pyspy.txt",
            cli_command("consume", "--exit-when-idle", "2", "--http-port", "0"),
            process_env(settings, CREDITSTREAM_LOG_FORMAT="json"),
            ctx.work_dir / f"{settings.run_id}.pyspy.log",
            timeout=ctx.plan.drain_timeout_s + 30,
        )
        stored = ResultsReader(settings).count()
    return {
        "label": f"{case.label} ({records:,} records, py-spy 100 Hz)",
        "records": stored,
        **summary,
    }


def run_producer_profile(ctx: BenchContext, per_message: int) -> dict[str, Any]:
    """`creditstream produce --synthetic` under py-spy into a queue nobody reads (untimed)."""
    from creditstream.bench.profile import PUBLISH_FRAME, py_spy, run_profiled

    binary = py_spy()
    label = f"producer with confirms, {per_message} rec/msg"
    if binary is None:
        return {"label": label, "skipped": "py-spy not installed (dev extra)"}
    records = ctx.plan.producer_records[per_message]
    with scenario(ctx, f"profprod{per_message}", "sqlite") as s:
        command = cli_command("produce", "--synthetic", "--limit", str(records), "--no-progress")
        command += ["--records-per-message", str(per_message)]
        summary = run_profiled(
            binary,
            ctx.work_dir / f"{s.run_id}.pyspy.txt",
            command,
            process_env(s, CREDITSTREAM_LOG_FORMAT="json"),
            ctx.work_dir / f"{s.run_id}.pyspy.log",
            timeout=ctx.plan.drain_timeout_s + 30,
            root=PUBLISH_FRAME,
        )
    return {"label": f"{label} ({records:,} records, py-spy 100 Hz)", **summary}


# --- the run --------------------------------------------------------------------------------
def _attempt(
    ctx: BenchContext,
    name: str,
    action: Callable[[], dict[str, Any]],
    *,
    budgeted: bool = True,
) -> dict[str, Any]:
    started = time.monotonic()
    budget = ctx.plan.time_budget_s if budgeted else None
    if budget is not None and started - ctx.started > budget:
        reason = f"time budget of {budget:g} s used up before it could start"
        ctx.say(f"- {name}: skipped ({reason})")
        ctx.notes.append(f"{name}: skipped, {reason}")
        return {"kind": name, "label": name, "skipped": reason}
    ctx.say(f"- {name} …")
    try:
        entry = action()
    except Exception as exc:  # one broken scenario must not hide the others
        log.exception("scenario %s failed", name)
        entry = {"kind": name, "label": name, "error": f"{type(exc).__name__}: {exc}"[:500]}
    took = time.monotonic() - started
    figure = entry.get("records_per_s")
    shown = f"{figure:,.0f} rec/s" if isinstance(figure, float) and math.isfinite(figure) else ""
    ctx.say(f"  {shown} {entry.get('error') or entry.get('skipped') or ''} ({took:.0f} s)".rstrip())
    return entry


def run_bench(
    base: Settings,
    *,
    quick: bool,
    out_dir: Path,
    pg_url: str = DEFAULT_PG_URL,
    console: Any = None,
) -> int:
    """Run every scenario, write benchmarks.json + benchmarks.md, print the tables.

    Exit code 0 unless a scenario errored or a figure is insane (missed targets do not fail).
    """
    from rich.console import Console

    console = console or Console()
    plan = build_plan(quick=quick)
    cache_dir = REPO_ROOT / ".cache" / "bench"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work_dir = cache_dir / "runs" / stamp
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = BenchContext(base, plan, pg_url, work_dir, cache_dir, say=console.print)
    started = time.monotonic()
    result: dict[str, Any] = {
        "quick": quick,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_before": load_average(),
        "versions": versions(base, pg_url),
        "throughput": {},
        "producer": {},
        "latency": [],
        "startup": {},
    }
    console.print(
        f"creditstream bench ({'quick' if quick else 'full'}); logs in {work_dir}; "
        f"load {result['load_before']}"
    )
    for per_message in sorted(plan.producer_records):
        result["producer"][f"producer-{per_message}rpm"] = _attempt(
            ctx,
            f"producer {per_message} rec/msg",
            functools.partial(run_producer, ctx, per_message),
        )
    result["throughput"][bench_report.CEILING] = _attempt(ctx, "ceiling", lambda: run_ceiling(ctx))
    result["throughput"][bench_report.SEED_STYLE] = _attempt(
        ctx, "seed-style", lambda: run_seed_style(ctx)
    )
    # NOTE: single-process cases and latency first: on a loaded machine the time budget then
    # skips only the multi-process scaling cases.
    cases = sorted(plan.consumer_cases, key=lambda c: c.processes > 1)
    for case in (c for c in cases if c.processes == 1):
        result["throughput"][case.key] = _attempt(
            ctx, case.label, functools.partial(run_consumer_case, ctx, case)
        )
    latency: list[dict[str, Any]] = []

    def latency_action() -> dict[str, Any]:
        latency.extend(run_latency(ctx))
        return {}

    outcome = _attempt(ctx, "request/reply latency", latency_action)
    result["latency"] = latency or [
        {"offered_per_s": r}
        | ({"skipped": outcome["skipped"]} if outcome.get("skipped") else {})
        | ({"error": outcome.get("error", "not run")} if not outcome.get("skipped") else {})
        for r in plan.latency_rates
    ]
    # NOTE: the staged-vs-fused comparison (issue 11) is not cut by the time budget: it is the
    # pipeline's one figure, and both paths run back to back in this run.
    result["pipeline"] = _attempt(
        ctx, "staged vs fused pipeline", lambda: run_pipeline(ctx), budgeted=False
    )
    checks = bench_report.evaluate_targets(result)
    missed = [c.name for c in checks if c.met is False and c.unit == "rec/s"]
    result["profiles"] = []
    if missed and plan.profile:
        ctx.notes.append("profiled because these targets were missed: " + "; ".join(missed))
        if any("consumer" in name for name in missed):
            for case, records in plan.profile_cases():
                profile = _attempt(
                    ctx,
                    f"profile: {case.label}",
                    functools.partial(run_profile, ctx, case, records),
                )
                result["profiles"].append(profile)
        if any("producer" in name for name in missed):
            profile = _attempt(
                ctx, "profile: producer", functools.partial(run_producer_profile, ctx, 1)
            )
            result["profiles"].append(profile)
    for case in (c for c in cases if c.processes > 1):
        result["throughput"][case.key] = _attempt(
            ctx, case.label, functools.partial(run_consumer_case, ctx, case)
        )
    one_process = [
        e
        for e in result["throughput"].values()
        if e.get("kind") == "creditstream"
        and e.get("processes") == 1
        and not e.get("error")
        and "cold_start_s" in e
    ]
    if one_process:
        result["startup"] = {
            "cold_start_s": max(e["cold_start_s"] for e in one_process),
            "peak_rss_mb": max(e["peak_rss_mb"] for e in one_process),
            "from": [e["label"] for e in one_process],
        }
    result["load_after"] = load_average()
    result["duration_s"] = time.monotonic() - started
    result["method"] = bench_report.method_lines(plan)
    result["notes"] = ctx.notes
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmarks.json").write_text(
        json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8"
    )
    (out_dir / "benchmarks.md").write_text(
        bench_report.render_markdown(result, reproduce=bench_report.REPRODUCE), encoding="utf-8"
    )
    bench_report.print_tables(result, console)
    problems = bench_report.sanity_problems(result)
    for problem in problems:
        console.print(f"[red]PROBLEM[/red] {problem}")
    console.print(f"report: {out_dir / 'benchmarks.md'} ({result['duration_s']:.0f} s)")
    return 1 if problems else 0
