"""The demo's live terminal view (rich), and a plain one-line form for logs and CI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from creditstream.timeline import TimelineRow


@dataclass(frozen=True)
class DemoSample:
    """One tick of the demo: its timeline row, plus what only the dashboard shows."""

    row: TimelineRow
    draining: int
    produced: int
    last_decision: str


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def _count(value: int | None, missing: str = "-") -> str:
    return missing if value is None else f"{value:,}"


def render(sample: DemoSample, recent_events: Sequence[str], header: str) -> Panel:
    """The rich renderable for one tick."""
    row = sample.row
    desired, running = row.desired_replicas or 0, row.running_replicas or 0
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    bar = "█" * min(40, (row.queue_depth or 0) // 500)
    table.add_row("elapsed", f"{row.t_s:6.1f} s   phase: [cyan]{row.phase}[/]")
    table.add_row(
        "queue depth",
        f"{_count(row.queue_depth)}  [dim]({row.depth_source or 'n/a'})[/] [blue]{bar}[/]",
    )
    table.add_row(
        "ready now",
        f"{_count(row.ready_live)}  [dim](AMQP passive declare; not what the rule reads)[/]",
    )
    replicas = "●" * running + "○" * max(0, desired - running)
    table.add_row(
        "replicas",
        f"desired [orange1]{desired}[/]  running [red]{running}[/]  "
        f"draining {sample.draining}  {replicas}",
    )
    rate = "-" if row.records_per_s is None else f"{row.records_per_s:,.0f}"
    table.add_row("records/s", rate)
    published = "-" if row.publish_rate is None else f"{row.publish_rate:,.0f}"
    table.add_row(
        "publish rate",
        f"{published}  [dim](management API publish_details.rate: the MessageRate trigger)[/]",
    )
    table.add_row("scored", f"{row.scored_total or 0:,} of {sample.produced:,} produced")
    table.add_row(
        "latency",
        f"p50 {_ms(row.p50_ms)}   p99 {_ms(row.p99_ms)}  [dim](publish -> stored, last 5 s)[/]",
    )
    table.add_row("dead-lettered", "-" if row.dead_lettered is None else str(row.dead_lettered))
    table.add_row("scaler", sample.last_decision)
    events = Text("\n".join(recent_events[-6:]) or "-", style="dim")
    return Panel(
        Group(table, Panel(events, title="events", border_style="dim")),
        title=header,
        border_style="green",
    )


def plain_line(sample: DemoSample) -> str:
    """The same state as one log line (when stdout is not a terminal)."""
    row = sample.row
    depth = "-" if row.queue_depth is None else str(row.queue_depth)
    ready = "-" if row.ready_live is None else str(row.ready_live)
    rate = "-" if row.records_per_s is None else f"{row.records_per_s:.0f}"
    published = "-" if row.publish_rate is None else f"{row.publish_rate:.0f}"
    return (
        f"t={row.t_s:6.1f}s phase={row.phase:<10} depth={depth:>6} ready={ready:>6} "
        f"desired={row.desired_replicas} running={row.running_replicas} "
        f"draining={sample.draining} rec/s={rate:>6} pub/s={published:>6} "
        f"scored={row.scored_total}/{sample.produced} "
        f"p50={_ms(row.p50_ms)} p99={_ms(row.p99_ms)} dlq={row.dead_lettered}"
    )
