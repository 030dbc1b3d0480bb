"""Benchmark scenario (issue 11): staged vs fused throughput on the same records, same run,
and per-stage latency from the `x-creditstream-trace` header.

Both paths start from a pre-filled queue of the same N data-set records (fused: request records
in the requests queue; staged: the raw CSV rows in the preprocess queue), one process per
worker (fused: 1 consumer; staged: 1 preprocess + 1 features + 1 score), PostgreSQL store. The
figure is wall time from starting the worker processes to the N-th stored row. A tap queue bound
to the score exchange receives a copy of every features output with its trace; per record the
segments are the queue waits and the work of each stage, and score = stored - features.out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pika
from sqlalchemy import MetaData, create_engine, select

from creditstream.harness.processes import ProcessGroup, run_cli
from creditstream.harness.results import ResultsReader
from creditstream.settings import Settings
from creditstream.stages.metrics import trace_of
from creditstream.stages.topology import (
    STAGES,
    TRACE_HEADER,
    declare_stages,
    delete_stages,
    stage_exchange,
)
from creditstream.store import predictions_table
from creditstream.topology import REQUEST_ROUTING_KEY

SEGMENTS = (
    ("preprocess wait", "produce", "preprocess.in"),
    ("preprocess work", "preprocess.in", "preprocess.out"),
    ("features wait", "preprocess.out", "features.in"),
    ("features work", "features.in", "features.out"),
)


def _produce(settings: Settings, data: Path, records: int, staged: bool) -> None:
    args = ["produce", "--data", str(data), "--limit", str(records), "--no-progress"]
    if staged:
        args += ["--pipeline", "staged"]
    done = run_cli(args, settings, timeout=max(300.0, records / 50))
    if done.returncode != 0 or f"produced {records} records" not in done.stdout:
        raise RuntimeError(f"producer: {done.stdout.strip()} {done.stderr[-500:]}")


def _drain(
    settings: Settings, log_dir: Path, args_list: list[list[str]], records: int, timeout_s: float
) -> float:
    """Start the processes, wait for `records` stored rows; wall seconds."""
    group = ProcessGroup(log_dir, settings, stop_timeout_s=30)
    results = ResultsReader(settings)
    started = time.monotonic()
    try:
        for args in args_list:
            group.start(args, name="-".join(args[:2]), http=True)
        while results.count() < records:
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"{results.count()} of {records} rows in {timeout_s:g} s")
            time.sleep(0.1)
        return time.monotonic() - started
    finally:
        group.stop_all()
        results.close()


def _declare_tap(settings: Settings) -> str:
    queue = f"{settings.stage_prefix}.bench-tap"
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url.get_secret_value()))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=False, arguments={"x-expires": 3_600_000})
        channel.queue_bind(queue, stage_exchange(settings, "score"), REQUEST_ROUTING_KEY)
    finally:
        connection.close()
    return queue


def _read_tap(settings: Settings, queue: str) -> dict[str, dict[str, int]]:
    """message id → trace of every features output the tap received."""
    traces: dict[str, dict[str, int]] = {}
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url.get_secret_value()))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=2000)
        for method, props, _body in channel.consume(queue, auto_ack=True, inactivity_timeout=2):
            if method is None:
                break
            headers = props.headers or {}
            traces[str(props.message_id)] = trace_of({TRACE_HEADER: headers.get(TRACE_HEADER)})
        channel.cancel()
        channel.queue_delete(queue)
    finally:
        connection.close()
    return traces


def _stored_at(settings: Settings) -> dict[str, float]:
    url = settings.database_url.get_secret_value()
    engine = create_engine(url)
    table = predictions_table(
        MetaData(schema=None if engine.dialect.name == "sqlite" else settings.database_schema)
    )
    try:
        with engine.connect() as conn:
            return {
                str(r): s.timestamp()
                for r, s in conn.execute(select(table.c.request_id, table.c.scored_at))
            }
    finally:
        engine.dispose()


def stage_latencies(
    traces: dict[str, dict[str, int]], stored: dict[str, float]
) -> dict[str, dict[str, float]]:
    """p50/p95/p99 ms of each segment over the records (score = stored - features.out)."""
    values: dict[str, list[float]] = {name: [] for name, _, _ in SEGMENTS}
    values["score (wait + work + commit)"] = []
    values["end to end"] = []
    for message_id, trace in traces.items():
        for name, start, end in SEGMENTS:
            if start in trace and end in trace:
                values[name].append((trace[end] - trace[start]) / 1000)
        at = stored.get(message_id)
        if at is not None and "features.out" in trace:
            values["score (wait + work + commit)"].append(at * 1000 - trace["features.out"] / 1000)
            if "produce" in trace:
                values["end to end"].append(at * 1000 - trace["produce"] / 1000)
    return {
        name: {
            "records": len(v),
            "p50_ms": float(np.percentile(v, 50)),
            "p95_ms": float(np.percentile(v, 95)),
            "p99_ms": float(np.percentile(v, 99)),
        }
        for name, v in values.items()
        if v
    }


def run_staged_vs_fused(
    scenario: Callable[[str], Any], data: Path, records: int, log_dir: Path, timeout_s: float
) -> dict[str, Any]:
    """Both paths on the same `records` data-set rows, one isolated scenario each."""
    entry: dict[str, Any] = {"records": records}
    with scenario("fused") as settings:
        _produce(settings, data, records, staged=False)
        seconds = _drain(settings, log_dir, [["consume"]], records, timeout_s)
        entry["fused"] = {"processes": 1, "seconds": seconds, "records_per_s": records / seconds}
    with scenario("staged") as settings:
        try:
            declare_stages(settings)
            tap = _declare_tap(settings)
            _produce(settings, data, records, staged=True)
            seconds = _drain(settings, log_dir, [["stage", s] for s in STAGES], records, timeout_s)
            with ResultsReader(settings) as results:
                summary = results.summary()
            traces = _read_tap(settings, tap)
            latencies = stage_latencies(traces, _stored_at(settings))
        finally:
            delete_stages(settings)
        entry["staged"] = {
            "processes": len(STAGES),
            "seconds": seconds,
            "records_per_s": records / seconds,
            "rows": summary.rows,
            "distinct_requests": summary.distinct_requests,
            "latency": latencies,
        }
    entry["staged_over_fused"] = entry["staged"]["records_per_s"] / entry["fused"]["records_per_s"]
    if entry["staged"]["rows"] != records or entry["staged"]["distinct_requests"] != records:
        entry["error"] = f"staged stored {entry['staged']['rows']} rows for {records} records"
    return entry


def markdown(entry: dict[str, Any]) -> list[str]:
    """The benchmarks.md section."""
    if entry.get("skipped") or "staged" not in entry:
        reason = entry.get("skipped") or entry.get("error") or "not run"
        return ["", "## Staged vs fused pipeline", "", f"- not measured: {reason}"]
    fused, staged = entry["fused"], entry["staged"]
    lines = [
        "",
        "## Staged vs fused pipeline (issue 11)",
        "",
        f"The same {entry['records']:,} data-set records, pre-filled, PostgreSQL store, one "
        "process per worker; wall time from starting the workers to the last stored row.",
        "",
        "| path | processes | seconds | records/s |",
        "|---|---|---|---|",
        f"| fused (consume) | {fused['processes']} | {fused['seconds']:.1f} | "
        f"{fused['records_per_s']:,.0f} |",
        f"| staged (preprocess, features, score) | {staged['processes']} | "
        f"{staged['seconds']:.1f} | {staged['records_per_s']:,.0f} |",
        "",
        f"Staged / fused throughput: {entry['staged_over_fused']:.2f} x.",
        "",
        "Per-stage latency of the staged run, from the `x-creditstream-trace` header (a tap "
        "queue bound to the score exchange receives a copy of each features output); the "
        "queues were pre-filled, so the waits include the backlog:",
        "",
        "| segment | records | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, figures in staged["latency"].items():
        lines.append(
            f"| {name} | {figures['records']:,} | {figures['p50_ms']:,.1f} | "
            f"{figures['p95_ms']:,.1f} | {figures['p99_ms']:,.1f} |"
        )
    return lines
