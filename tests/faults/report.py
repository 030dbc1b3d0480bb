"""Render the figures the fault tests measured (.cache/reliability/*.json) into
docs/reliability.md, between the `figures` markers. Run: `make reliability-report`."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from creditstream.settings import REPO_ROOT
from tests.faults.ledger import LEDGER_DIR, load_runs

DOC = REPO_ROOT / "docs" / "reliability.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


def _faults(run: dict[str, Any]) -> str:
    test = run["test"]
    if test == "consumer-sigkill":
        return f"{run['kills']} × SIGKILL of a consumer (of {run['consumers']}), restarted"
    if test == "broker-connection-loss":
        return (
            f"{run['connection_cuts']} cuts, {run['connections_closed']} connections closed; "
            f"reconnects: producer {run['producer_reconnects']}, consumers "
            f"{', '.join(str(int(r)) for r in run['consumer_reconnects'])}"
        )
    if test.startswith("cluster-"):
        return (
            f"{run['nodes']}-node cluster: {run['faults']}; reconnects: producer "
            f"{run['producer_reconnects']}, consumers "
            f"{', '.join(str(int(r)) for r in run['consumer_reconnects'])}"
        )
    if test == "database-outage":
        return (
            f"database refused connections for {run['outage_seconds']} s "
            f"({run['sessions_terminated']} sessions cut); store errors per consumer "
            f"{', '.join(str(int(e)) for e in run['store_errors_per_consumer'])}; acked meanwhile "
            f"{int(sum(run['acked_during_outage']))}"
        )
    if test == "poison":
        return (
            f"{run['dead_lettered_with_reason']:,} bad records + "
            f"{run['dead_lettered_at_delivery_limit']} messages failing scoring "
            f"({int(run['scoring_failures'])} failures, delivery limit {run['delivery_limit']})"
        )
    if test == "backpressure":
        peaks = ", ".join(f"{k} {v} MiB" for k, v in sorted(run["peak_rss_mib"].items()))
        return (
            f"memory alarm (connection.blocked: {run['blocked_notice']}); backlog "
            f"{run['backlog_messages']:,}; peak RSS {peaks} (budget {run['memory_budget_mib']} MiB)"
        )
    if test == "memory-alarm" and "reply_seconds_after_clear" in run:
        return (
            f"memory alarm while a caller waited on reply_to: request stored and acked "
            f"{run['acked_seconds_during_alarm']} s into the alarm, no reply during it (3 s "
            f"checked), reply {run['reply_seconds_after_clear']} s after it cleared"
        )
    if test == "memory-alarm" and "bad_records" in run:
        return (
            f"memory alarm while 1 consumer drained {run['records']:,} good + "
            f"{run['bad_records']} malformed messages: {run['acked_during_alarm']:,} acked in "
            f"{run['drain_seconds_during_alarm']} s during the alarm, "
            f"{run['dead_letters_during_alarm']} dead letters published meanwhile, "
            f"{run['dead_letters_after']} after it cleared"
        )
    if test == "memory-alarm":
        return (
            f"memory alarm while {run['consumers']} consumer drained a backlog of "
            f"{run['records']:,}: {run['stored_during_alarm']:,} stored and "
            f"{run.get('acked_during_alarm', 0):,} acked in "
            f"{run['drain_seconds_during_alarm']} s during the alarm, "
            f"{run['events_in_stream_during_alarm']:,} events in the results stream meanwhile; "
            f"after it cleared {run['events_in_stream_after']:,} events "
            f"({run['distinct_events_after']:,} distinct) within "
            f"{run['seconds_until_events_after_clear']} s; watermark after "
            f"{run['watermark_after']}"
        )
    if test == "security-credentials":
        return (
            f"{run['secrets_searched']} secrets searched in {run['log_bytes_scanned']:,} bytes "
            f"of logs; found {run['leaked']}"
        )
    if test == "security-tls":
        return f"{run['tls_sessions']} TLS sessions through a private-CA proxy"
    if test == "fuzz-through-consumer":
        return (
            f"{run['messages']:,} fuzzed bodies into a `creditstream consume` process; "
            f"{len(run['reasons'])} reject reasons, as the codec predicted"
        )
    if test == "id-fuzz-through-consumer-on-postgresql":
        return (
            f"{run['messages']:,} messages with NUL, lone-surrogate, 255-byte, non-UTF-8, RTL "
            f"and combining-character ids into a consumer on PostgreSQL; "
            f"{run['stored']:,} stored of {run['expected_stored']:,} expected; reasons "
            f"{', '.join(f'{k} {v}' for k, v in sorted(run['reasons'].items()))}"
        )
    if test == "fuzz":
        return (
            f"{run['bodies']:,} generated bodies ({run['valid']:,} valid, "
            f"{run['near_valid']:,} near-valid, {run['garbage']:,} garbage); none raised"
        )
    return ", ".join(f"{k}={v}" for k, v in run.items() if k not in {"test", "variant"})


def _recognised(run: dict[str, Any]) -> str:
    parts = []
    if "redelivered_messages_seen" in run:
        parts.append(f"{int(run['redelivered_messages_seen']):,} redelivered")
    if "duplicate_records_skipped" in run:
        parts.append(f"{int(run['duplicate_records_skipped']):,} duplicates skipped")
    if "producer_republished" in run:
        parts.append(f"{run['producer_republished']:,} republished")
    return "; ".join(parts) or "–"


def _cell(run: dict[str, Any], key: str) -> str:
    value = run.get(key)
    return "–" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def render(runs: list[dict[str, Any]]) -> str:
    """The markdown table of every recorded run."""
    if not runs:
        return f"_No recorded runs yet: run `make test-faults` (figures go to {LEDGER_DIR})._"
    lines = [
        "| Test | Variant | Records | Faults injected | Recognised | Dead-lettered | Lost | "
        "Duplicated | Finished (UTC), commit |",
        "|---|---|---:|---|---|---:|---:|---:|---|",
    ]
    for run in runs:
        dead = run.get("dead_lettered_with_reason", 0) + run.get(
            "dead_lettered_at_delivery_limit", 0
        )
        records = run.get("records", run.get("good_records", run.get("stored")))
        lines.append(
            f"| {run['test']} | {run['variant']} | {_cell({'r': records}, 'r')} | {_faults(run)} "
            f"| {_recognised(run)} | {dead:,} | {_cell(run, 'lost')} | "
            f"{_cell(run, 'duplicated')} | {run['finished_at']}, `{run['commit']}` |"
        )
    return "\n".join(lines)


CLUSTER_START, CLUSTER_END = "<!-- cluster-figures:start -->", "<!-- cluster-figures:end -->"


def _replace_block(text: str, start: str, end: str, table: str) -> str | None:
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        return None
    return pattern.sub(lambda _m: f"{start}\n{table}\n{end}", text)


def main(argv: list[str] | None = None) -> int:
    """Rewrite the figures blocks of docs/reliability.md: single-broker runs, cluster runs.

    A block with no recorded run is left as it is (figures of another machine stay).
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--print", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    runs = load_runs()
    cluster = [r for r in runs if r["test"].startswith("cluster-")]
    single = [r for r in runs if not r["test"].startswith("cluster-")]
    if args.print:
        print(render(single))
        print(render(cluster))
        return 0
    text = DOC.read_text()
    for block_runs, start, end in ((single, START, END), (cluster, CLUSTER_START, CLUSTER_END)):
        if not block_runs:
            continue
        replaced = _replace_block(text, start, end, render(block_runs))
        if replaced is None:
            print(f"{DOC}: markers {start} … {end} not found", file=sys.stderr)
            return 1
        text = replaced
    DOC.write_text(text)
    print(f"wrote {len(runs)} runs into {DOC.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
