"""The benchmark driver: pre-fill, drain, time, and write the report.

Every scenario declares its own exchanges and (quorum) queues and its own PostgreSQL schema or
SQLite file, and removes them in `finally`. Queues are filled by `creditstream produce` before
the consumer under test starts, so producer and consumer never share the two cores while the
drain is timed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from creditstream.autoscale.supervisor import free_port, settings_env
from creditstream.bench import report as bench_report
from creditstream.bench.isolation import isolated
from creditstream.bench.machine import load_average, machine_info, versions
from creditstream.bench.plan import BenchPlan, ConsumerCase, build_plan
from creditstream.bench.stats import DrainTiming, rate
from creditstream.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

DEFAULT_PG_URL: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
_SUMMARY = re.compile(r"produced (\d+) records in (\d+) messages in ([\d.]+) s")
_READY_POLL_S: Final = 0.02
_PROGRESS_POLL_S: Final = 0.2

REPRODUCE: Final = """Needs RabbitMQ on 127.0.0.1:5672 (guest/guest) and PostgreSQL on
127.0.0.1:5432 (database `test`, user `postgres`), as `make services` checks; the seed-style
baseline also needs the UCI data set (CREDITSTREAM_DATA_PATH, default
`../shared/data/UCI_Credit_Card.csv`).

```bash
make bench                                          # full run (< 10 min): rewrites this file
make bench-quick                                    # CI sanity run (< 2 min), .cache/bench-quick/
.venv/bin/creditstream bench --out /tmp/bench       # full run elsewhere
.venv/bin/creditstream bench --pg-url postgresql+psycopg://user@host/db
```

`benchmarks.json` beside this file holds every figure in machine-readable form. Run on a quiet
machine: other load changes absolute numbers much more than the ratios."""


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


# --- subprocess helpers ---------------------------------------------------------------------
def _cli() -> list[str]:
    return [sys.executable, "-m", "creditstream.cli"]


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITSTREAM_")}
    env.update(settings_env(settings))
    env.update(extra)
    return env


def _tail(path: Path, lines: int = 8) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


def produce(
    ctx: BenchContext, settings: Settings, records: int, per_message: int
) -> dict[str, Any]:
    """`creditstream produce --synthetic` into the scenario's queue; its confirmed rate."""
    log_path = ctx.work_dir / f"{settings.run_id}-producer-{per_message}rpm.log"
    command = [
        *_cli(),
        "produce",
        "--synthetic",
        "--limit",
        str(records),
        "--records-per-message",
        str(per_message),
        "--run-id",
        f"{settings.run_id}-{per_message}",
        "--no-progress",
    ]
    with log_path.open("w") as handle:
        done = subprocess.run(
            command,
            env=_env(settings, CREDITSTREAM_LOG_FORMAT="json"),
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
            timeout=max(120.0, records / 1000),
            check=False,
        )
    match = _SUMMARY.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(
            f"producer exited {done.returncode}: {done.stdout.strip()} {_tail(log_path)}"
        )
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
    log_path = ctx.work_dir / f"{settings.run_id}.log"
    with log_path.open("w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            # NOTE: one inference thread, like creditstream's onnxruntime session: OpenMP's
            # default (a spinning thread per core) made scikit-learn ~10x slower per record on
            # this shared 2-core box, which would flatter creditstream's ratio.
            env=_env(settings, OMP_NUM_THREADS="1"),
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
            timeout=timeout,
            check=False,
        )
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{module} exited {done.returncode} without a result: {_tail(log_path)}")
    result: dict[str, Any] = json.loads(lines[-1])
    if result.get("first_receive") is None:
        raise RuntimeError(f"{module} received nothing: {_tail(log_path)}")
    timing = DrainTiming(result["first_receive"], result["last_ack"], result["records"])
    return {
        "records": result["records"],
        "messages": result["messages"],
        "seconds": timing.seconds,
        "records_per_s": timing.records_per_s,
        "messages_per_s": rate(result["messages"], timing.seconds),
        "exit_code": done.returncode,
    }


# --- scenarios ------------------------------------------------------------------------------
def run_producer(ctx: BenchContext, per_message: int) -> dict[str, Any]:
    """Publish rate with confirms into a queue nobody consumes."""
    records = ctx.plan.producer_records[per_message]
    with isolated(ctx.base, f"producer{per_message}", "sqlite", ctx.work_dir, ctx.pg_url) as s:
        figures = produce(ctx, s, records, per_message)
    return {
        "kind": "producer",
        "label": f"producer with confirms, {per_message} rec/msg",
        "records_per_message": per_message,
        **figures,
    }


def run_ceiling(ctx: BenchContext) -> dict[str, Any]:
    """No-op consumer (decode + multi-ack) over a pre-filled quorum queue."""
    n = ctx.plan.ceiling_messages
    with isolated(ctx.base, "ceiling", "sqlite", ctx.work_dir, ctx.pg_url) as settings:
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
    with isolated(ctx.base, "seedstyle", store, ctx.work_dir, ctx.pg_url) as settings:
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
        stored = _count_rows(settings)
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


def _count_rows(settings: Settings) -> int:
    from sqlalchemy import create_engine, text

    table = (
        f'"{settings.database_schema}".predictions' if settings.database_schema else "predictions"
    )
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def _store_timing(settings: Settings) -> tuple[float, float, int]:
    """(min received_at, max scored_at, rows) from the results store, epoch seconds."""
    from sqlalchemy import create_engine, text

    table = (
        f'"{settings.database_schema}".predictions' if settings.database_schema else "predictions"
    )
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        with engine.connect() as conn:
            low, high, rows = conn.execute(
                text(f"SELECT min(received_at), max(scored_at), count(*) FROM {table}")
            ).one()
    finally:
        engine.dispose()
    return _epoch(low), _epoch(high), int(rows)


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.timestamp()
    # NOTE: SQLite returns the text layout the store wrote (UTC, no zone).
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC).timestamp()


@dataclass
class _Watched:
    popen: subprocess.Popen[bytes]
    port: int
    started: float
    log_path: Path
    ready_after: float | None = None
    peak_rss: int = 0


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def _metric(text: str, name: str, **labels: str) -> float:
    want = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    for line in text.splitlines():
        if line.startswith(name + want + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _peak_rss_kernel(pid: int) -> int:
    """VmHWM (the kernel's peak resident set) in bytes; 0 where /proc is unavailable."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def start_consumers(ctx: BenchContext, settings: Settings, count: int, name: str) -> list[_Watched]:
    """Start `creditstream consume` processes, each with its own HTTP port and log."""
    watched = []
    for index in range(count):
        port = free_port()
        log_path = ctx.work_dir / f"{name}-consumer{index}.log"
        with log_path.open("wb") as handle:
            started = time.monotonic()
            popen = subprocess.Popen(
                [*_cli(), "consume"],
                env=_env(
                    settings,
                    CREDITSTREAM_HTTP_PORT=str(port),
                    CREDITSTREAM_HTTP_HOST="127.0.0.1",
                    CREDITSTREAM_LOG_FORMAT="json",
                ),
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        watched.append(_Watched(popen, port, started, log_path))
    return watched


def _poll_once(process: _Watched) -> None:
    import psutil

    now = time.monotonic()
    if process.ready_after is None:
        status, _ = _get(f"http://127.0.0.1:{process.port}/readyz")
        if status == 200:
            process.ready_after = now - process.started
    with contextlib.suppress(psutil.Error):
        process.peak_rss = max(
            process.peak_rss, psutil.Process(process.popen.pid).memory_info().rss
        )


def wait_ready(processes: list[_Watched], timeout: float) -> None:
    """Poll /readyz every 20 ms until every process answers 200 (cold start)."""
    deadline = time.monotonic() + timeout
    while any(p.ready_after is None for p in processes):
        for p in processes:
            if p.popen.poll() is not None:
                raise RuntimeError(f"consumer exited {p.popen.returncode}: {_tail(p.log_path)}")
            _poll_once(p)
        if time.monotonic() > deadline:
            raise RuntimeError(f"consumer not ready within {timeout:g} s")
        time.sleep(_READY_POLL_S)


def stop_consumers(processes: list[_Watched]) -> list[int | None]:
    """SIGTERM (the consumer drains and exits 0); SIGKILL after 30 s."""
    for p in processes:
        p.peak_rss = max(p.peak_rss, _peak_rss_kernel(p.popen.pid))
        if p.popen.poll() is None:
            p.popen.send_signal(signal.SIGTERM)
    codes: list[int | None] = []
    for p in processes:
        try:
            codes.append(p.popen.wait(timeout=30))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()
            codes.append(None)
    return codes


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
    partial: tuple[float, float, int] | None = None
    with isolated(ctx.base, name, case.store, ctx.work_dir, ctx.pg_url) as settings:
        produce(ctx, settings, case.records, case.records_per_message)
        processes = start_consumers(ctx, settings, case.processes, settings.run_id or name)
        codes: list[int | None] = []
        try:
            wait_ready(processes, timeout=60)
            deadline = time.monotonic() + ctx.plan.drain_timeout_s
            while True:
                texts = [_get(f"http://127.0.0.1:{p.port}/metrics")[1] for p in processes]
                scored = sum(
                    _metric(t, "creditstream_records_total", outcome="scored") for t in texts
                )
                store_sum = sum(_metric(t, "creditstream_store_seconds_sum") for t in texts)
                store_count = sum(_metric(t, "creditstream_store_seconds_count") for t in texts)
                if scored >= case.records:
                    break
                for p in processes:
                    if p.popen.poll() is not None:
                        raise RuntimeError(
                            f"consumer exited {p.popen.returncode}: {_tail(p.log_path)}"
                        )
                    _poll_once(p)
                if time.monotonic() > deadline:
                    # NOTE: bounded in time: measure what was stored so far, before stopping.
                    partial = _store_timing(settings)
                    break
                time.sleep(_PROGRESS_POLL_S)
        finally:
            codes = stop_consumers(processes)
        first, last_scored, rows = partial or _store_timing(settings)
    mean_write = store_sum / store_count if store_count else 0.0
    timing = DrainTiming(first, last_scored + mean_write, rows)
    errors = []
    if partial is None and rows != case.records:
        errors.append(f"stored {rows} rows for {case.records} records")
    if partial is not None and rows == 0:
        errors.append(f"nothing stored within {ctx.plan.drain_timeout_s:g} s")
    if partial is None and any(code != 0 for code in codes):
        errors.append(f"consumer exit codes {codes} (expected 0 after SIGTERM)")
    messages = math.ceil(rows / case.records_per_message)
    entry.update(
        {
            "records": rows,
            "messages": messages,
            "seconds": timing.seconds,
            "records_per_s": timing.records_per_s,
            "messages_per_s": rate(messages, timing.seconds),
            "mean_store_write_ms": mean_write * 1000,
            "cold_start_s": max(p.ready_after or math.inf for p in processes),
            "peak_rss_mb": max(p.peak_rss for p in processes) / 2**20,
            "error": "; ".join(errors) or None,
        }
    )
    if partial is not None:
        entry["note"] = (
            f"bounded: {rows} of {case.records} records stored within "
            f"{ctx.plan.drain_timeout_s:g} s"
        )
        ctx.notes.append(f"{case.label}: {entry['note']}")
    return entry


def run_latency(ctx: BenchContext) -> list[dict[str, Any]]:
    """One consumer (PostgreSQL store); PredictionClient at each offered rate."""
    from creditstream.bench.latency import measure_latency
    from creditstream.client import PredictionClient
    from creditstream.model_card import load_model_card
    from creditstream.synthetic import iter_synthetic_records

    card = load_model_card(ctx.base.resolved_model_card_path)
    records = list(iter_synthetic_records(card.document, 5_000, ctx.base.seed))
    results: list[dict[str, Any]] = []
    with isolated(ctx.base, "latency", "postgresql", ctx.work_dir, ctx.pg_url) as settings:
        processes = start_consumers(ctx, settings, 1, settings.run_id or "latency")
        try:
            wait_ready(processes, timeout=60)
            with PredictionClient(settings, connect_wait_s=10) as client:
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
        finally:
            stop_consumers(processes)
    return results


def run_profile(ctx: BenchContext, case: ConsumerCase, records: int) -> dict[str, Any]:
    """Drain a pre-filled queue with one consumer under py-spy (untimed); where time goes."""
    from creditstream.bench.profile import py_spy, run_profiled

    binary = py_spy()
    if binary is None:
        return {"label": case.label, "skipped": "py-spy not installed (dev extra)"}
    name = f"prof{case.store[:2]}{case.records_per_message}"
    with isolated(ctx.base, name, case.store, ctx.work_dir, ctx.pg_url) as settings:
        produce(ctx, settings, records, case.records_per_message)
        summary = run_profiled(
            binary,
            ctx.work_dir / f"{settings.run_id}.pyspy.txt",
            [*_cli(), "consume", "--exit-when-idle", "2", "--http-port", "0"],
            _env(settings, CREDITSTREAM_LOG_FORMAT="json"),
            ctx.work_dir / f"{settings.run_id}.pyspy.log",
            timeout=ctx.plan.drain_timeout_s + 30,
        )
        stored = _count_rows(settings)
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
    with isolated(ctx.base, f"profprod{per_message}", "sqlite", ctx.work_dir, ctx.pg_url) as s:
        command = [*_cli(), "produce", "--synthetic", "--limit", str(records)]
        command += ["--records-per-message", str(per_message), "--no-progress"]
        summary = run_profiled(
            binary,
            ctx.work_dir / f"{s.run_id}.pyspy.txt",
            command,
            _env(s, CREDITSTREAM_LOG_FORMAT="json"),
            ctx.work_dir / f"{s.run_id}.pyspy.log",
            timeout=ctx.plan.drain_timeout_s + 30,
            root=PUBLISH_FRAME,
        )
    return {"label": f"{label} ({records:,} records, py-spy 100 Hz)", **summary}


# --- the run --------------------------------------------------------------------------------
def method_lines(plan: BenchPlan) -> list[str]:
    """How each figure was obtained (goes into the report)."""
    return [
        "Isolation: every scenario declares its own exchanges and quorum requests queue "
        "(x-delivery-limit and dead-lettering as in production) and its own PostgreSQL schema "
        "or SQLite file; all are deleted afterwards.",
        "Queues are pre-filled with `creditstream produce --synthetic` (SYNTHETIC records from "
        "the model card) before the consumer under test starts: producer and consumer never "
        "share the two cores while a drain is timed.",
        "creditstream drain = first receive (min `received_at` in the store) → last durable "
        "write (max `scored_at` in the store + the consumers' mean store-transaction time from "
        "their /metrics); rec/s = stored rows / drain. The stored row count must equal the "
        "records sent, and every consumer must exit 0 on SIGTERM.",
        f"creditstream consumers run as real `creditstream consume` processes with the default "
        f"settings: prefetch {plan.prefetch}, batch {plan.batch_size} records, flush timeout "
        "20 ms, onnxruntime 1 thread, SQLite synchronous=FULL (WAL), PostgreSQL default commit.",
        "ceiling: a no-op pika consumer process (JSON decode + basic_ack multiple=True per "
        f"{plan.batch_size} messages or when idle) with the same queue type and prefetch; "
        "timed in-process from first delivery to last ack.",
        "seed-style: one record per message, the project's scikit-learn pipeline (the model "
        "card's chosen candidate, fitted on the training split, cached under .cache/bench/) "
        "`predict_proba` per record (OMP_NUM_THREADS=1, like creditstream's single ONNX "
        "thread), one INSERT + COMMIT per record into PostgreSQL, one ack per message; "
        "timed in-process from first delivery to last ack, bounded to "
        f"{plan.seed_style_messages} messages or {plan.seed_style_max_s:g} s.",
        "producer: `creditstream produce --synthetic` (windowed publisher confirms, persistent "
        "messages) into a queue with no consumer; rate = confirmed records / publishing time as "
        "reported by the producer (interpreter start-up excluded).",
        f"latency: `PredictionClient` (direct reply-to), one record per request, open-loop "
        f"schedule fixed in advance for {plan.latency_duration_s:g} s per rate after "
        f"{plan.latency_warmup} warm-up requests; latency = reply received − scheduled send "
        "time (no coordinated omission); one consumer, PostgreSQL store.",
        "cold start: `creditstream consume` process start → first HTTP 200 from /readyz "
        "(polled every 20 ms; the queue is already full, as after a KEDA scale-up); peak RSS = "
        "max of psutil RSS samples and the kernel's VmHWM. Target figures are the worst of the "
        "1-process scenarios.",
    ]


def _attempt(ctx: BenchContext, name: str, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.monotonic()
    budget = ctx.plan.time_budget_s
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
    result["method"] = method_lines(plan)
    result["notes"] = ctx.notes
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmarks.json").write_text(
        json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8"
    )
    (out_dir / "benchmarks.md").write_text(
        bench_report.render_markdown(result, reproduce=REPRODUCE), encoding="utf-8"
    )
    bench_report.print_tables(result, console)
    problems = bench_report.sanity_problems(result)
    for problem in problems:
        console.print(f"[red]PROBLEM[/red] {problem}")
    console.print(f"report: {out_dir / 'benchmarks.md'} ({result['duration_s']:.0f} s)")
    return 1 if problems else 0
