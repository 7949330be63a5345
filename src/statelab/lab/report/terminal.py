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
    console = console or Console(width=max(Console().width, 120))
    table = Table(title=f"statelab bench: {result['workload']}")
    columns = ("profile", "requests/s", "rounds", "p50 ms", "p99 ms", "errors", "ratio to stateful")
    for column in columns:
        table.add_column(column, justify="left" if column == "profile" else "right")
    for profile, m in result["profiles"].items():
        table.add_row(
            profile,
            f"{m['rps']:.0f}",
            " ".join(f"{r:.0f}" for r in m.get("rounds_rps", [])),
            f"{m['p50_ms']:.1f}",
            f"{m['p99_ms']:.1f}",
            str(m["errors"]),
            f"{m['ratio']:.2f}",
        )
    console.print(table)
    if result.get("scale_out"):
        curve = Table(title=f"scale-out ({result.get('scale_out_note', '')})")
        curve.add_column("replicas", justify="right")
        curve.add_column("requests/s", justify="right")
        for point in result["scale_out"]:
            curve.add_row(str(point["replicas"]), f"{point['rps']:.0f}")
        console.print(curve)
    console.print(f"load generator: {result['load_generator']}")
