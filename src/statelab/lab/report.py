"""Printing what the lab saw, in the terminal."""

from __future__ import annotations

from typing import Any

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


def print_bench(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"statelab bench — {result['workload']}")
    for column in ("profile", "requests/s", "p50 ms", "p99 ms", "errors", "ratio to stateful"):
        table.add_column(column, justify="right" if column != "profile" else "left")
    for profile, m in result["profiles"].items():
        table.add_row(
            profile,
            f"{m['rps']:.0f}",
            f"{m['p50_ms']:.1f}",
            f"{m['p99_ms']:.1f}",
            str(m["errors"]),
            f"{m['ratio']:.2f}",
        )
    console.print(table)
    console.print(f"load generator: {result['load_generator']}")
