"""The benchmark report (pure): ratios, targets, sanity checks, Markdown and a rich table.

The report is a plain JSON-able dict written by the runner:
`throughput[key]` → {label, kind, records, messages, seconds, records_per_s, messages_per_s,
error, ...}; `producer[key]` likewise; `latency` → list of per-rate results; `machine`,
`versions`, `load_before`/`load_after`, `method`. Every figure below is computed from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from creditstream.bench.plan import STORES, BenchPlan, Store

CEILING: Final = "ceiling"
SEED_STYLE: Final = "seed-style"
SEED_STYLE_STORE: Final[Store] = "postgresql"

# Targets of issue 5 on this 2-core machine with the broker on the same box.
TARGET_RECORDS_1RPM: Final = 10_000.0
TARGET_CEILING_FRACTION: Final = 0.5
TARGET_SEED_STYLE_FACTOR: Final = 10.0
TARGET_RECORDS_100RPM: Final = 100_000.0
TARGET_PRODUCER: Final = 15_000.0
TARGET_LATENCY_RATE: Final = 2_000.0
TARGET_P50_MS: Final = 5.0
TARGET_P99_MS: Final = 20.0
TARGET_COLD_START_S: Final = 2.0
TARGET_RSS_MB: Final = 150.0

# Sanity bounds for --quick (CI): far outside any plausible figure, so only breakage trips them.
SANE_MAX_CEILING_MULTIPLE: Final = 3.0
SANE_MAX_COLD_START_S: Final = 60.0
SANE_MAX_RSS_MB: Final = 4096.0


def case_key(processes: int, store: str, records_per_message: int) -> str:
    """Key of a creditstream consumer case (same as plan.ConsumerCase.key)."""
    return f"creditstream-{processes}p-{store}-{records_per_message}rpm"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _as_float(value: Any) -> float | None:
    return float(value) if _finite(value) else None


def _figure(report: Mapping[str, Any], section: str, key: str, field: str) -> float | None:
    entry = report.get(section, {}).get(key)
    if not entry or entry.get("error"):
        return None
    value = entry.get(field)
    return float(value) if _finite(value) else None


@dataclass(frozen=True)
class Ratio:
    """One ratio between two figures of the same run."""

    name: str
    numerator: str
    denominator: str
    value: float | None


def ratios(report: Mapping[str, Any]) -> list[Ratio]:
    """creditstream / ceiling, creditstream / seed-style, and the scaling ratios."""
    found: list[Ratio] = []

    def add(name: str, num: str, den: str, num_field: str, den_field: str) -> None:
        a = _figure(report, "throughput", num, num_field)
        b = _figure(report, "throughput", den, den_field)
        value = a / b if a is not None and b is not None and b > 0 else None
        found.append(Ratio(name, num, den, value))

    for store in STORES:
        one = case_key(1, store, 1)
        add(f"creditstream ({store}) / ceiling", one, CEILING, "records_per_s", "records_per_s")
        add(
            f"creditstream ({store}) / seed-style",
            one,
            SEED_STYLE,
            "records_per_s",
            "records_per_s",
        )
        add(
            f"creditstream ({store}, 100 rec/msg) / ceiling",
            case_key(1, store, 100),
            CEILING,
            "records_per_s",
            "records_per_s",
        )
        for processes in (2, 4):
            for rpm in (1, 100):
                add(
                    f"{processes} processes / 1 process ({store}, {rpm} rec/msg)",
                    case_key(processes, store, rpm),
                    case_key(1, store, rpm),
                    "records_per_s",
                    "records_per_s",
                )
    return [r for r in found if r.value is not None or _present(report, r)]


def _present(report: Mapping[str, Any], ratio: Ratio) -> bool:
    throughput = report.get("throughput", {})
    return ratio.numerator in throughput and ratio.denominator in throughput


@dataclass(frozen=True)
class TargetCheck:
    """One target of the issue: the figure measured and whether it is met (None: not measured)."""

    name: str
    target: str
    measured: float | None
    unit: str
    met: bool | None


def _check(
    name: str, target: str, measured: float | None, unit: str, ok: Callable[[float], bool]
) -> TargetCheck:
    return TargetCheck(name, target, measured, unit, None if measured is None else ok(measured))


def evaluate_targets(report: Mapping[str, Any]) -> list[TargetCheck]:
    """Every target of issue 5 against this run's figures."""
    checks: list[TargetCheck] = []
    by_name = {r.name: r.value for r in ratios(report)}
    for store in STORES:
        one = _figure(report, "throughput", case_key(1, store, 1), "records_per_s")
        checks.append(
            _check(
                f"1 consumer, 1 rec/msg, {store}",
                f">= {TARGET_RECORDS_1RPM:,.0f} rec/s",
                one,
                "rec/s",
                lambda v: v >= TARGET_RECORDS_1RPM,
            )
        )
        checks.append(
            _check(
                f"1 consumer, 1 rec/msg, {store} vs ceiling",
                f">= {TARGET_CEILING_FRACTION:g} x ceiling",
                by_name.get(f"creditstream ({store}) / ceiling"),
                "x",
                lambda v: v >= TARGET_CEILING_FRACTION,
            )
        )
        checks.append(
            _check(
                f"1 consumer, 1 rec/msg, {store} vs seed-style",
                f">= {TARGET_SEED_STYLE_FACTOR:g} x seed-style",
                by_name.get(f"creditstream ({store}) / seed-style"),
                "x",
                lambda v: v >= TARGET_SEED_STYLE_FACTOR,
            )
        )
        checks.append(
            _check(
                f"1 consumer, 100 rec/msg, {store}",
                f">= {TARGET_RECORDS_100RPM:,.0f} rec/s",
                _figure(report, "throughput", case_key(1, store, 100), "records_per_s"),
                "rec/s",
                lambda v: v >= TARGET_RECORDS_100RPM,
            )
        )
    checks.append(
        _check(
            "producer with confirms, 1 rec/msg",
            f">= {TARGET_PRODUCER:,.0f} rec/s",
            _figure(report, "producer", "producer-1rpm", "records_per_s"),
            "rec/s",
            lambda v: v >= TARGET_PRODUCER,
        )
    )
    at_rate = next(
        (
            entry
            for entry in report.get("latency", [])
            if entry.get("offered_per_s") == TARGET_LATENCY_RATE and not entry.get("error")
        ),
        None,
    )
    p50 = at_rate.get("p50_ms") if at_rate else None
    p99 = at_rate.get("p99_ms") if at_rate else None
    checks.append(
        _check(
            f"p50 at {TARGET_LATENCY_RATE:,.0f} rec/s offered",
            f"<= {TARGET_P50_MS:g} ms",
            _as_float(p50),
            "ms",
            lambda v: v <= TARGET_P50_MS,
        )
    )
    checks.append(
        _check(
            f"p99 at {TARGET_LATENCY_RATE:,.0f} rec/s offered",
            f"<= {TARGET_P99_MS:g} ms",
            _as_float(p99),
            "ms",
            lambda v: v <= TARGET_P99_MS,
        )
    )
    startup = report.get("startup", {})
    cold = startup.get("cold_start_s")
    rss = startup.get("peak_rss_mb")
    checks.append(
        _check(
            "consumer cold start (process start -> /readyz 200)",
            f"<= {TARGET_COLD_START_S:g} s",
            _as_float(cold),
            "s",
            lambda v: v <= TARGET_COLD_START_S,
        )
    )
    checks.append(
        _check(
            "consumer peak RSS",
            f"<= {TARGET_RSS_MB:g} MB",
            _as_float(rss),
            "MB",
            lambda v: v <= TARGET_RSS_MB,
        )
    )
    return checks


def sanity_problems(report: Mapping[str, Any]) -> list[str]:
    """What makes a run unusable (errors, lost records, impossible numbers) — not missed targets."""
    problems: list[str] = []
    for section in ("throughput", "producer"):
        for key, entry in report.get(section, {}).items():
            if entry.get("skipped"):
                continue
            if entry.get("error"):
                problems.append(f"{key}: {entry['error']}")
                continue
            for field in ("records_per_s", "seconds"):
                value = entry.get(field)
                if not _finite(value) or value <= 0:
                    problems.append(f"{key}: {field} is {value!r}")
    ceiling = _figure(report, "throughput", CEILING, "records_per_s")
    if ceiling is not None:
        for key, entry in report.get("throughput", {}).items():
            if entry.get("kind") != "creditstream" or entry.get("records_per_message") != 1:
                continue
            value = entry.get("records_per_s")
            per_process = value / max(1, int(entry.get("processes", 1))) if _finite(value) else 0
            if per_process > SANE_MAX_CEILING_MULTIPLE * ceiling:
                problems.append(
                    f"{key}: {per_process:,.0f} rec/s per process is over "
                    f"{SANE_MAX_CEILING_MULTIPLE:g} x the no-op ceiling ({ceiling:,.0f})"
                )
    for entry in report.get("latency", []):
        label = f"latency at {entry.get('offered_per_s')} rec/s"
        if entry.get("skipped"):
            continue
        if entry.get("error"):
            problems.append(f"{label}: {entry['error']}")
            continue
        if entry.get("errors") or entry.get("replied") != entry.get("sent"):
            problems.append(
                f"{label}: {entry.get('replied')} replies for {entry.get('sent')} requests "
                f"({entry.get('errors')} errors)"
            )
        p50, p99 = entry.get("p50_ms"), entry.get("p99_ms")
        if not (_finite(p50) and _finite(p99) and 0 < p50 <= p99):
            problems.append(f"{label}: percentiles out of order or missing (p50 {p50}, p99 {p99})")
    pipeline = report.get("pipeline", {})
    if pipeline.get("error"):
        problems.append(f"staged vs fused pipeline: {pipeline['error']}")
    startup = report.get("startup", {})
    cold, rss = startup.get("cold_start_s"), startup.get("peak_rss_mb")
    if not (_finite(cold) and 0 < cold < SANE_MAX_COLD_START_S):
        problems.append(f"cold start is {cold!r} s")
    if not (_finite(rss) and 0 < rss < SANE_MAX_RSS_MB):
        problems.append(f"peak RSS is {rss!r} MB")
    return problems


# --- rendering ------------------------------------------------------------------------------
def _num(value: Any, digits: int = 0) -> str:
    if not _finite(value):
        return "—"
    return f"{value:,.{digits}f}"


def _met(check: TargetCheck) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[check.met]


def throughput_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """Scenario, records, messages, seconds, rec/s, msg/s, cold start, peak RSS, note."""
    rows = []
    for section in ("throughput", "producer"):
        for entry in report.get(section, {}).values():
            rows.append(
                [
                    entry.get("label", "?"),
                    _num(entry.get("records")),
                    _num(entry.get("messages")),
                    _num(entry.get("seconds"), 2),
                    _num(entry.get("records_per_s")),
                    _num(entry.get("messages_per_s")),
                    _num(entry.get("cold_start_s"), 2),
                    _num(entry.get("peak_rss_mb"), 0),
                    entry.get("error") or entry.get("skipped") or entry.get("note", ""),
                ]
            )
    return rows


THROUGHPUT_HEADER: Final = [
    "scenario",
    "records",
    "messages",
    "seconds",
    "rec/s",
    "msg/s",
    "cold start s",
    "peak RSS MB",
    "note",
]
LATENCY_HEADER: Final = [
    "offered rec/s",
    "sent",
    "replied",
    "achieved rec/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "max send lag ms",
]


def latency_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row per offered rate."""
    return [
        [
            _num(e.get("offered_per_s")),
            _num(e.get("sent")),
            _num(e.get("replied")),
            _num(e.get("achieved_per_s")),
            _num(e.get("p50_ms"), 2),
            _num(e.get("p95_ms"), 2),
            _num(e.get("p99_ms"), 2),
            _num(e.get("max_ms"), 2),
            _num(e.get("max_send_lag_ms"), 2),
        ]
        for e in report.get("latency", [])
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return lines


def render_markdown(report: Mapping[str, Any], *, reproduce: str) -> str:
    """The whole report as Markdown (docs/benchmarks.md for a full run)."""
    machine = report.get("machine", {})
    versions = report.get("versions", {})
    lines = [
        "# creditstream benchmarks",
        "",
        f"Generated by `creditstream bench{' --quick' if report.get('quick') else ''}` on "
        f"{report.get('started_at', '?')} in {_num(report.get('duration_s'), 0)} s. "
        "Every figure below was measured in this one run; none is typed in by hand.",
        "",
        "## Machine",
        "",
        f"- {machine.get('cores', '?')} cores, {machine.get('cpu_model', '?')}, "
        f"{machine.get('memory_gb', '?')} GB RAM, Linux {machine.get('kernel', '?')}",
        f"- load average (1/5/15 min) before: {report.get('load_before')}, after: "
        f"{report.get('load_after')} — the machine is shared, so absolute figures are noisy; "
        "the ratios compare scenarios of the same run.",
        "- RabbitMQ, PostgreSQL and the benchmark all run on this machine.",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "## Targets",
        "",
    ]
    lines += _table(
        ["target", "wanted", "measured", "result"],
        [
            [
                c.name,
                c.target,
                f"{_num(c.measured, 2 if c.unit in {'x', 'ms', 's'} else 0)} {c.unit}",
                _met(c),
            ]
            for c in evaluate_targets(report)
        ],
    )
    lines += ["", "## Ratios (same run)", ""]
    lines += _table(["ratio", "value"], [[r.name, _num(r.value, 2) + " x"] for r in ratios(report)])
    lines += ["", "## Throughput", ""]
    lines += _table(THROUGHPUT_HEADER, throughput_rows(report))
    lines += ["", "## Request/reply latency (open loop)", ""]
    lines += _table(LATENCY_HEADER, latency_rows(report))
    if "pipeline" in report:
        from creditstream.stages.bench import markdown as pipeline_markdown

        lines += pipeline_markdown(report["pipeline"])
    profiles = [p for p in report.get("profiles", []) if p.get("samples")]
    if profiles:
        lines += [
            "",
            "## Profile (py-spy; run because a throughput target was missed)",
            "",
            "Samples of the consumer's serving loop or the producer's publishing run (start-up "
            "excluded), each attributed to the innermost frame of a known concern.",
        ]
        for profile in profiles:
            lines += ["", f"### {profile['label']}", "", f"{profile['samples']:,} samples.", ""]
            lines += _table(
                ["where the time goes (innermost known frame)", "% of samples"],
                [[name, f"{share:.1f}"] for name, share in profile["concerns"]],
            )
            lines += [""]
            lines += _table(
                ["heaviest frames (inclusive)", "% of samples"],
                [[f"`{name}`", f"{share:.1f}"] for name, share in profile["inclusive"][:8]],
            )
    lines += ["", "## Method", ""]
    lines += [f"- {item}" for item in report.get("method", [])]
    notes = report.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {item}" for item in notes]
    problems = sanity_problems(report)
    lines += ["", "## Sanity", ""]
    lines += [f"- PROBLEM: {p}" for p in problems] or ["- no errors, no lost records, figures sane"]
    lines += ["", "## Reproduce", "", reproduce, ""]
    return "\n".join(lines)


def print_tables(report: Mapping[str, Any], console: Any) -> None:
    """The throughput, latency and target tables on a rich console."""
    from rich.table import Table

    for title, header, rows in (
        ("throughput", THROUGHPUT_HEADER, throughput_rows(report)),
        ("request/reply latency", LATENCY_HEADER, latency_rows(report)),
        (
            "ratios",
            ["ratio", "value"],
            [[r.name, _num(r.value, 2) + " x"] for r in ratios(report)],
        ),
        (
            "targets",
            ["target", "wanted", "measured", "result"],
            [
                [c.name, c.target, f"{_num(c.measured, 2)} {c.unit}", _met(c).strip("*")]
                for c in evaluate_targets(report)
            ],
        ),
    ):
        table = Table(title=title)
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)


REPRODUCE: Final = """Needs RabbitMQ on 127.0.0.1:5672 (guest/guest) and PostgreSQL on
127.0.0.1:5432 (database `test`, user `postgres`), as `make services` checks; the seed-style
baseline also needs the UCI data set (CREDITSTREAM_DATA_PATH, default
`../shared/data/UCI_Credit_Card.csv`).

```bash
make bench                                          # full run (< 10 min): rewrites this file
make bench-quick                                    # CI sanity run (< 2 min), .cache/bench-quick/
.venv/bin/creditstream bench --out /tmp/bench       # full run elsewhere
.venv/bin/creditstream bench --pg-url-file pg-url  # file: postgresql+psycopg://user:pw@host/db
```

`benchmarks.json` beside this file holds every figure in machine-readable form. Run on a quiet
machine: other load changes absolute numbers much more than the ratios."""


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
