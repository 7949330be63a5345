"""Printing what the lab saw, in the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from statelab.lab.journey import JourneyResult


def print_journey(results: list[JourneyResult], console: Console | None = None) -> None:
    console = console or Console()
    for result in results:
        table = Table(title=f"profile {result.profile}", show_lines=False)
        for column in ("served by", "step", "outcome"):
            table.add_column(column)
        for step in result.steps:
            table.add_row(step.replica, step.action, step.outcome)
        console.print(table)
    summary = Table(title="what the second replica knew")
    for column in ("profile", "session", "cart items", "balance"):
        summary.add_column(column)
    for r in results:
        summary.add_row(
            r.profile,
            "kept" if r.session_survived else "lost",
            str(r.cart_seen_on_r2),
            str(r.balance_seen_on_r2) if r.session_survived else "-",
        )
    console.print(summary)
