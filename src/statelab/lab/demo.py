"""``statelab demo``: every scenario in every profile it applies to, then verdicts."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from statelab.lab.report import Report, now
from statelab.lab.scenarios import CLAIM_JUDGES, SCENARIOS, Result, Scenario, run_scenario


class UnknownName(ValueError):
    """A scenario or profile name the lab does not know."""


def select(scenarios: list[str] | None, profiles: list[str] | None) -> list[tuple[Scenario, str]]:
    """The (scenario, profile) runs asked for, in a stable order."""
    chosen = scenarios or list(SCENARIOS)
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        raise UnknownName(f"unknown scenario {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    runs = [(SCENARIOS[n], p) for n in chosen for p in SCENARIOS[n].profiles]
    if profiles:
        runs = [(s, p) for s, p in runs if p in profiles]
    return runs


def judge(report: Report) -> None:
    """Give every claim its verdict from the runs of the scenarios that test it."""
    by_scenario: dict[str, dict[str, Result]] = {}
    for r in report.results:
        by_scenario.setdefault(r.name, {})[r.profile] = r
    for name, results in by_scenario.items():
        verdict, reason = SCENARIOS[name].judge(results)
        for r in results.values():
            r.verdict, r.reason = verdict, reason
        for claim in SCENARIOS[name].claims:
            report.verdicts.setdefault(claim, (verdict, f"{name}: {reason}"))
    for claim, combined in CLAIM_JUDGES.items():
        found = combined(by_scenario) if claim in report.verdicts else None
        if found is not None:
            report.verdicts[claim] = found


def run_demo(
    scenarios: list[str] | None = None,
    profiles: list[str] | None = None,
    quick: bool = False,
    run_root: Path | None = None,
    console: Console | None = None,
    sessions: int | None = None,
) -> Report:
    runs = select(scenarios, profiles)
    report = Report(started=now())
    console = console or Console()
    with (
        tempfile.TemporaryDirectory(prefix="statelab-lab-") as tmp,
        Progress(console=console, transient=False) as progress,
    ):
        root = run_root or Path(tmp)
        task = progress.add_task("lab", total=len(runs))
        for scenario, profile in runs:
            progress.update(task, description=f"{scenario.name} / {profile}")
            played = run_scenario(scenario, profile, root, quick, sessions)
            report.results.append(asyncio.run(played))
            progress.advance(task)
    judge(report)
    return report
