"""The lab's verdicts and the bench's numbers as tables in the terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from statelab.lab.report import Report

STYLE = {"confirmed": "green", "refuted": "red", "partly true": "yellow", "not measured": "dim"}


def print_report(report: Report, console: Console | None = None, stories: bool = False) -> None:
    console = console or Console(width=max(140, Console().width))
    table = Table(title="statelab: the claims, measured", show_lines=True)
    table.add_column("claim", ratio=3)
    table.add_column("criterion", ratio=3)
    table.add_column("measured", ratio=5)
    table.add_column("verdict", ratio=1)
    for c in report.claims():
        style = STYLE.get(c["verdict"], "")
        table.add_row(
            f"[b]{c['id']}[/b] {c['claim']}",
            c["criterion"],
            c["reason"] + (f"\n\n{c['story']}" if stories and c["story"] else ""),
            f"[{style}]{c['verdict']}[/{style}]",
        )
    console.print(table)
    for run in report.runs:
        if not run.held:
            failed = [name for name, ok in run.invariants.items() if not ok]
            console.print(f"[red]invariant violated[/red] {run.id}: {', '.join(failed)}")


def print_bench(result: dict[str, Any], console: Console | None = None) -> None:
    """The bench's servers (median, and the rounds' min-max), its scale-out curve or
    its chat measurement, and where everything ran."""
    from statelab.lab.bench import HEADERS, SCALE_HEADERS, chat_rows, rows, scale_rows

    console = console or Console(width=max(Console().width, 140))
    title = f"statelab bench: {result['description']}"
    if result.get("chat"):
        console.print(_table(title, ("chat", "measured"), chat_rows(result)))
    else:
        console.print(_table(title, HEADERS, rows(result)))
        console.print(
            "ratios: requests/s and CPU per request of each column against stateful's, "
            "and the FastAPI floor's CPU per request against each server's (higher is better)"
        )
    if result.get("scale_out"):
        title = f"scale-out ({result['scale_out_note']})"
        console.print(_table(title, SCALE_HEADERS, scale_rows(result)))
    console.print(f"load generator: {result['load_generator']}")
    console.print(f"pinning: {result['pinning']['note']}")


def _table(title: str, headers: tuple[str, ...], body: list[list[str]]) -> Table:
    table = Table(title=title)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in body:
        table.add_row(*row)
    return table
