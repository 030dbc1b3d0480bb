"""The demo's closing numbers: what the results store holds, latency, and AUC against labels."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rich.console import Console

    from creditstream.demo.load import DataChoice, LoadDriver
    from creditstream.demo.values import DemoValues
    from creditstream.harness.metrics import Histogram
    from creditstream.harness.results import ResultsReader
    from creditstream.harness.supervisor import Supervisor
    from creditstream.timeline import TimelineRow


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    negatives = int(len(y) - positives)
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs both classes")
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    start = 0
    while start < len(s):
        end = start
        while end + 1 < len(s) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def auc_against_labels(
    probabilities: Mapping[str, float], labels: Mapping[str, int]
) -> tuple[float, int] | None:
    """(AUC, records used) over the record ids that have both a prediction and a label."""
    common = [record for record in probabilities if record in labels]
    if not common:
        return None
    y = [labels[record] for record in common]
    if len(set(y)) < 2:
        return None
    return roc_auc(y, [probabilities[record] for record in common]), len(common)


def labels_from_dataset(path: Path) -> dict[str, int]:
    """record id -> label of the UCI data set (ids as the producer sends them)."""
    from creditstream.contract import ID_FIELD, LABEL_FIELD
    from creditstream.data.dataset import load_dataset

    frame = load_dataset(path)
    return {
        str(int(i)) if float(i).is_integer() else str(i): int(label)
        for i, label in zip(frame[ID_FIELD], frame[LABEL_FIELD], strict=True)
    }


@dataclass
class BurstTiming:
    """When a burst started producing and when its first consumer was ready (epoch seconds)."""

    name: str
    run_id: str  # the producer's --run-id: its message ids are `<run_id>-<sequence>`
    started_at: float
    first_ready_at: float | None = None


def _quantiles_ms(latencies_s: Sequence[float]) -> dict[str, Any]:
    if not latencies_s:
        return {"records": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    values = np.asarray(latencies_s, dtype=np.float64) * 1000
    return {
        "records": int(values.size),
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p99_ms": round(float(np.percentile(values, 99)), 1),
        "max_ms": round(float(values.max()), 1),
    }


def burst_latency(
    bursts: Sequence[BurstTiming], sent_at: Mapping[str, float], stored_at: Mapping[str, float]
) -> list[dict[str, Any]]:
    """Publish -> stored per burst, split at the moment the burst's first consumer was ready.

    Records published before it pay for scaling from zero (KEDA's polling interval, the
    management API's statistics lag, the consumer's cold start); the rest are steady state.
    A burst that found a consumer already ready has no cold part.
    """
    report = []
    for burst in bursts:
        prefix = f"{burst.run_id}-"
        ready = burst.first_ready_at
        cold: list[float] = []
        steady: list[float] = []
        missing = 0
        first_publish: float | None = None
        for message_id, published in sent_at.items():
            if not message_id.startswith(prefix):
                continue
            first_publish = published if first_publish is None else min(first_publish, published)
            stored = stored_at.get(message_id)
            if stored is None:
                missing += 1
                continue
            target = cold if ready is None or published < ready else steady
            target.append(max(0.0, stored - published))
        report.append(
            {
                "burst": burst.name,
                "first_consumer_ready_after_s": (
                    None if ready is None else round(max(0.0, ready - burst.started_at), 1)
                ),
                # NOTE: the producer starts (imports, reads its file) before its first publish;
                # the cold start the records pay is counted from that publish.
                "first_publish_after_s": (
                    None
                    if first_publish is None
                    else round(max(0.0, first_publish - burst.started_at), 1)
                ),
                "first_consumer_ready_after_first_publish_s": (
                    None
                    if ready is None or first_publish is None
                    else round(max(0.0, ready - first_publish), 1)
                ),
                "cold": _quantiles_ms(cold),
                "steady": _quantiles_ms(steady),
                "published_not_stored": missing,
            }
        )
    return report


def build_summary(
    *,
    rows: list[TimelineRow],
    load: LoadDriver,
    results: ResultsReader,
    end_to_end: Histogram,
    supervisor: Supervisor,
    data: DataChoice,
    elapsed: float,
    values: DemoValues,
    bursts: Sequence[BurstTiming] = (),
    sent_at: Mapping[str, float] | None = None,
    zero_during_burst: Sequence[float] = (),
) -> dict[str, Any]:
    """Every closing figure of a run (written to summary.json)."""
    from creditstream.timeline import summarize_timeline

    counts = results.summary()
    stats = summarize_timeline(rows)
    processing = results.processing_latencies_ms()
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
            "p50": _round_ms(end_to_end.quantile(0.5)),
            "p95": _round_ms(end_to_end.quantile(0.95)),
            "p99": _round_ms(end_to_end.quantile(0.99)),
            "count": int(end_to_end.count),
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
        "latency_by_burst": burst_latency(
            bursts, sent_at or {}, results.scored_at_by_message() if bursts else {}
        ),
        "scale_to_zero_while_producing_s": [round(t, 1) for t in zero_during_burst],
        "peak_queue_depth": stats.peak_depth,
        "peak_ready_live": stats.peak_ready_live,
        "peak_desired_replicas": stats.peak_desired,
        "peak_running_replicas": stats.peak_running,
        "scaled_above_one": stats.scaled_above_one,
        "returned_to_zero": stats.returned_to_zero,
        "consumer_starts": supervisor.starts,
        "consumer_restarts_after_crash": supervisor.restarts,
        "consumer_exit_codes": sorted(set(supervisor.exit_codes)),
        "autoscaling": asdict(values.autoscaling),
        "consumer": asdict(values.consumer),
        "overrides": values.override_lines,
    }
    if data.path is not None:
        auc = auc_against_labels(results.probabilities_by_record(), labels_from_dataset(data.path))
        if auc is not None:
            summary["auc"] = {"value": round(auc[0], 4), "records": auc[1]}
    return summary


def _round_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def write_summary(console: Console, summary: Mapping[str, Any], run_dir: Path) -> None:
    """Print the summary; write summary.json and summary.md into the run folder."""
    from rich.text import Text

    (run_dir / "summary.json").write_text(
        json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8"
    )
    e2e, proc = summary["end_to_end_ms"], summary["consumer_processing_ms"]
    ok = "[green]yes[/]" if summary["every_record_scored_once"] else "[red]NO[/]"
    peak_ready = summary["peak_ready_live"]
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
        f"live AMQP ready peak {'-' if peak_ready is None else f'{peak_ready:,}'}), peak "
        f"replicas {summary['peak_running_replicas']} (desired "
        f"{summary['peak_desired_replicas']}), back to 0: {summary['returned_to_zero']}",
    ]
    for burst in summary.get("latency_by_burst", []):
        cold, steady = burst["cold"], burst["steady"]
        ready = burst["first_consumer_ready_after_s"]
        after_publish = burst.get("first_consumer_ready_after_first_publish_s")
        verdict = (
            "[green]<= 1 s[/]"
            if steady["p99_ms"] is not None and steady["p99_ms"] <= 1000
            else "[red]> 1 s[/]"
        )
        lines.append(
            f"{burst['burst']:<10} publish->stored: cold start (published before the first "
            f"consumer was ready, {ready} s after the producer started, {after_publish} s "
            f"after its first publish) {cold['records']:,} records "
            f"p50 {cold['p50_ms']} ms p99 {cold['p99_ms']} ms; steady state "
            f"{steady['records']:,} records p50 {steady['p50_ms']} ms p99 {steady['p99_ms']} ms "
            f"({verdict})"
        )
    zeros = summary.get("scale_to_zero_while_producing_s", [])
    lines.append(
        "to zero    while a burst was producing: "
        + ("[green]never[/]" if not zeros else "[red]at " + ", ".join(f"{t} s" for t in zeros))
    )
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
        "\n".join(f"- {Text.from_markup(line).plain}" for line in lines) + "\n", encoding="utf-8"
    )


def _producers_text(summary: Mapping[str, Any]) -> str:
    rate = summary["producer_rate_records_per_s"]
    parts = [
        f"{p['burst']} {p['records']:,} in {p['seconds']} s (exit {p['exit_code']})"
        for p in summary["producers"]
    ]
    return f"producer --rate {rate:g}: " + ("; ".join(parts) or "no burst finished")
