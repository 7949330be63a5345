"""What the lab saw: ``report.json``, the terminal tables and a self-contained
``report.html`` (plots drawn by matplotlib as inline SVG; nothing is fetched)."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from statelab.lab.claims import CLAIMS_BY_ID, Judgement
from statelab.lab.framework import Run, Runs

VERSION = 2


@dataclass
class Report:
    started: datetime
    quick: bool = False
    runs: Runs = field(default_factory=Runs)
    judgements: dict[str, Judgement] = field(default_factory=dict)  # by claim id

    @property
    def ok(self) -> bool:
        """Every invariant of every run held (an expected stateful loss is a finding)."""
        return all(r.held for r in self.runs)

    def claims(self) -> list[dict[str, Any]]:
        out = []
        for cid, j in sorted(self.judgements.items(), key=lambda item: _order(item[0])):
            claim = CLAIMS_BY_ID[cid]
            out.append(
                {
                    "id": cid,
                    "claim": claim.text,
                    "criterion": claim.criterion,
                    "verdict": j.verdict,
                    "reason": j.reason,
                    "story": j.story,
                    "runs": j.runs,
                }
            )
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "started": self.started.isoformat(timespec="seconds"),
            "quick": self.quick,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "claims": self.claims(),
            "runs": [_run_json(r) for r in self.runs],
        }


def _run_json(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "scenario": run.scenario,
        "variant": run.variant.label,
        "configuration": run.variant.describe(),
        "profile": run.variant.profile,
        "placements": run.placements,
        "balance": run.balance,
        "claims": list(run.claims),
        "held": run.held,
        "invariants": run.invariants,
        "metrics": run.metrics,
        "summary": run.summary,
        "seconds": run.seconds,
        "timeline": asdict(run.timeline) if run.timeline else None,
    }


def _order(claim_id: str) -> int:
    return int(claim_id.removeprefix("C"))


def run_line(run: Run) -> str:
    """One finished run in one line, as the demo prints it."""
    mark = "" if run.held else "  [invariant VIOLATED]"
    return f"{run.id}: {run.summary}{mark}"


def write_reports(report: Report, json_path: Path | None, html_path: Path | None) -> None:
    if json_path is not None:
        json_path.write_text(json.dumps(report.as_json(), indent=1, default=str) + "\n")
    if html_path is not None:
        from statelab.lab.report.html import render_html  # matplotlib: only when asked

        html_path.write_text(render_html(report))


def now() -> datetime:
    return datetime.now(UTC)


__all__ = ["Report", "now", "run_line", "write_reports"]
