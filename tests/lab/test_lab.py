"""The lab: every scenario in its quick form against real deployments, with its
invariants; verdicts from real runs; the reports validate and render offline."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from statelab.cli import app
from statelab.lab.claims import CLAIMS, VERDICTS
from statelab.lab.demo import plan, run_demo
from statelab.lab.report import Report, write_reports
from statelab.lab.scenarios import SCENARIOS

SCHEMA = json.loads(resources.files("statelab.lab").joinpath("report.schema.json").read_text())


class _Fetches(HTMLParser):
    """Collects every attribute that would make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.fetches: list[str] = []
        self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.svgs += tag == "svg"
        for name, value in attrs:
            if (
                name in ("src", "href", "data", "xlink:href")
                and value
                and not value.startswith("#")
            ):
                self.fetches.append(f"{tag} {name}={value}")
        if tag in ("script", "link", "iframe", "img", "object", "embed"):
            self.fetches.append(tag)


def check_reports(report: Report, folder: Path) -> str:
    json_path, html_path = folder / "report.json", folder / "report.html"
    write_reports(report, json_path, html_path)
    jsonschema.validate(json.loads(json_path.read_text()), SCHEMA)
    page = html_path.read_text()
    parser = _Fetches()
    parser.feed(page)
    assert parser.fetches == []
    return page


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_every_scenario_in_quick_form(tmp_path: Path) -> None:
    lines: list[str] = []
    report = run_demo(quick=True, run_root=tmp_path / "runs", say=lines.append)
    ran = {run.id for run in report.runs}
    assert ran == {f"{s.name}/{v.label}" for s, v in plan(quick=True)}
    assert len(lines) == len(ran)  # one line per finished run, as it finishes
    broken = {r.id: [k for k, ok in r.invariants.items() if not ok] for r in report.runs
              if not r.held}  # fmt: skip
    assert broken == {}
    found = report.claims()
    assert [c["id"] for c in found] == [c.id for c in CLAIMS]
    assert all(c["verdict"] in VERDICTS and c["reason"] and c["runs"] for c in found)
    # The stateful losses are findings the lab must see, not hide.
    by_id = {r.id: r for r in report.runs}
    assert by_id["pizza/stateful"].metrics["session_survived"] is False
    assert by_id["pizza/stateless"].metrics["items_lost"] == 0
    assert by_id["atm/stateful"].metrics["distinct_answers"] > 1
    assert by_id["redis-restart/aof-off"].metrics["items_lost"] > 0  # the control loses data
    assert by_id["redis-restart/aof-everysec"].metrics["items_lost"] == 0
    page = check_reports(report, tmp_path)
    assert page.count("<svg") >= 8  # timelines, CDFs, skew, memory, timers
    for c in found:
        assert f'id="{c["id"]}"' in page


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_knob_changed_from_the_command_line(tmp_path: Path) -> None:
    """The stateless profile with memory sessions loses Alice's session (the control
    for the pizza verdict), reported by `statelab scenario` with its flags."""
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        ["scenario", "pizza", "--profile", "stateless", "--place", "session=memory",
         "--quick", "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    (run,) = data["runs"]
    assert run["configuration"].startswith("--profile stateless --place session=memory")
    assert run["placements"]["session"] == "memory"
    assert run["metrics"]["session_survived"] is False
    jsonschema.validate(data, SCHEMA)


def test_unknown_names_are_refused() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["scenario", "nonesuch"])
    assert result.exit_code == 2 and "unknown scenario" in result.output
    result = runner.invoke(app, ["scenario", "memory", "--set", "sizes=3"])
    assert result.exit_code == 2 and "memory knobs are" in result.output


def test_every_claim_is_tested_by_a_scenario() -> None:
    assert {c for s in SCENARIOS.values() for c in s.claims} == {c.id for c in CLAIMS}
