"""``statelab demo`` and ``statelab scenario``: plan the runs, play them one after the
other (each in a deployment of its own), judge every claim, and say as it goes."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from statelab.lab.claims import CLAIMS, Claim, judge_all
from statelab.lab.framework import Runs, Scenario, UnknownName, Variant, run_variant
from statelab.lab.report import Report, now, run_line
from statelab.lab.scenarios import SCENARIOS

Say = Callable[[str], None]


def scenario(name: str) -> Scenario:
    found = SCENARIOS.get(name)
    if found is None:
        raise UnknownName(f"unknown scenario {name}; known: {', '.join(SCENARIOS)}")
    return found


def plan(
    scenarios: list[str] | None = None,
    variants: list[str] | None = None,
    profiles: list[str] | None = None,
    quick: bool = False,
) -> list[tuple[Scenario, Variant]]:
    """The (scenario, variant) runs asked for, in the demo's order: every scenario's
    own plan (the knob under test and its controls), optionally filtered."""
    chosen = [scenario(name) for name in (scenarios or list(SCENARIOS))]
    runs = [(s, v) for s in chosen for v in s.plan(quick)]
    if variants:
        runs = [(s, v) for s, v in runs if v.label in variants]
    if profiles:
        runs = [(s, v) for s, v in runs if v.profile in profiles]
    if not runs:
        raise UnknownName("no run matches those scenarios, variants and profiles")
    return runs


def play(
    runs: list[tuple[Scenario, Variant]],
    quick: bool = False,
    run_root: Path | None = None,
    say: Say = print,
) -> Report:
    """Play ``runs`` in order, then judge every claim over what was measured."""
    report = Report(started=now(), quick=quick)
    with tempfile.TemporaryDirectory(prefix="statelab-lab-") as tmp:
        root = run_root or Path(tmp)
        for i, (sc, variant) in enumerate(runs, 1):
            began = time.monotonic()
            try:
                run = asyncio.run(run_variant(sc, variant, root, quick, report.runs))
            except Exception as exc:
                say(f"[{i}/{len(runs)}] {sc.name}/{variant.label}: FAILED ({exc})")
                raise
            report.runs.add(run)
            say(f"[{i}/{len(runs)}] {run_line(run)} ({time.monotonic() - began:.0f} s)")
    report.judgements = judge_all(report.runs, _claims_of(report.runs))
    return report


def _claims_of(runs: Runs) -> list[Claim]:
    """The claims whose scenarios ran (a claim none of them tests is left out)."""
    tested = {c for run in runs for c in run.claims}
    return [c for c in CLAIMS if c.id in tested]


def run_demo(
    scenarios: list[str] | None = None,
    variants: list[str] | None = None,
    profiles: list[str] | None = None,
    quick: bool = False,
    run_root: Path | None = None,
    say: Say = print,
) -> Report:
    return play(plan(scenarios, variants, profiles, quick), quick, run_root, say)
