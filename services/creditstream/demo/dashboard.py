"""The demo's live terminal view (rich), and a plain one-line form for logs and CI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class DashboardState:
    """Everything the dashboard shows at one tick."""

    elapsed_s: float
    phase: str
    queue_depth: int | None
    depth_source: str
    desired: int
    running: int
    draining: int
    records_per_s: float | None
    scored: int
    produced: int
    p50_ms: float | None
    p99_ms: float | None
    dead_lettered: int | None
    last_decision: str
    ready_live: int | None = None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def render(state: DashboardState, recent_events: Sequence[str], header: str) -> Panel:
    """The rich renderable for one tick."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    depth = "-" if state.queue_depth is None else f"{state.queue_depth:,}"
    bar = "█" * min(40, (state.queue_depth or 0) // 500)
    table.add_row("elapsed", f"{state.elapsed_s:6.1f} s   phase: [cyan]{state.phase}[/]")
    table.add_row("queue depth", f"{depth}  [dim]({state.depth_source or 'n/a'})[/] [blue]{bar}[/]")
    ready = "-" if state.ready_live is None else f"{state.ready_live:,}"
    table.add_row("ready now", f"{ready}  [dim](AMQP passive declare; not what the rule reads)[/]")
    replicas = "●" * state.running + "○" * max(0, state.desired - state.running)
    table.add_row(
        "replicas",
        f"desired [orange1]{state.desired}[/]  running [red]{state.running}[/]  "
        f"draining {state.draining}  {replicas}",
    )
    rate = "-" if state.records_per_s is None else f"{state.records_per_s:,.0f}"
    table.add_row("records/s", rate)
    table.add_row("scored", f"{state.scored:,} of {state.produced:,} produced")
    table.add_row(
        "latency",
        f"p50 {_ms(state.p50_ms)}   p99 {_ms(state.p99_ms)}  [dim](publish -> stored, last 5 s)[/]",
    )
    table.add_row("dead-lettered", "-" if state.dead_lettered is None else str(state.dead_lettered))
    table.add_row("scaler", state.last_decision)
    events = Text("\n".join(recent_events[-6:]) or "-", style="dim")
    return Panel(
        Group(table, Panel(events, title="events", border_style="dim")),
        title=header,
        border_style="green",
    )


def plain_line(state: DashboardState) -> str:
    """The same state as one log line (when stdout is not a terminal)."""
    depth = "-" if state.queue_depth is None else str(state.queue_depth)
    ready = "-" if state.ready_live is None else str(state.ready_live)
    rate = "-" if state.records_per_s is None else f"{state.records_per_s:.0f}"
    return (
        f"t={state.elapsed_s:6.1f}s phase={state.phase:<10} depth={depth:>6} ready={ready:>6} "
        f"desired={state.desired} running={state.running} draining={state.draining} "
        f"rec/s={rate:>6} scored={state.scored}/{state.produced} "
        f"p50={_ms(state.p50_ms)} p99={_ms(state.p99_ms)} dlq={state.dead_lettered}"
    )
