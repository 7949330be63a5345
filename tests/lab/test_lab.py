"""The lab: every scenario in its quick form, against real deployments, with its
invariants; the reports validate and render without network fetches."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from statelab.lab.demo import judge, run_demo, select
from statelab.lab.report import Report, now, render_html, write_reports
from statelab.lab.scenarios import CLAIMS, SCENARIOS, Result

SCHEMA = json.loads(resources.files("statelab.lab").joinpath("report.schema.json").read_text())


class _Fetches(HTMLParser):
    """Collects every attribute that would make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.fetches: list[str] = []
        self.tags = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags += 1
        for name, value in attrs:
            if name in ("src", "href", "data") and value and not value.startswith("#"):
                self.fetches.append(f"{tag} {name}={value}")
        if tag in ("script", "link", "iframe", "img"):
            self.fetches.append(tag)


def _check_reports(report: Report, tmp_path: Path) -> None:
    json_path, html_path = tmp_path / "report.json", tmp_path / "report.html"
    write_reports(report, json_path, html_path)
    jsonschema.validate(json.loads(json_path.read_text()), SCHEMA)
    parser = _Fetches()
    parser.feed(html_path.read_text())
    assert parser.tags > 20
    assert parser.fetches == []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_scenario_in_quick_form(tmp_path: Path) -> None:
    report = run_demo(quick=True, run_root=tmp_path / "runs")
    ran = {(r.name, r.profile) for r in report.results}
    assert ran == {(s.name, p) for s, p in select(None, None)}
    broken = {
        f"{r.name}/{r.profile}": [k for k, ok in r.invariants.items() if not ok]
        for r in report.results
        if not r.held
    }
    assert broken == {}
    assert set(report.verdicts) == {c for s in SCENARIOS.values() for c in s.claims}
    assert all(v in ("confirmed", "refuted", "partly true") for v, _ in report.verdicts.values())
    # The stateful losses are findings the lab must see, not hide.
    pizza = {r.profile: r for r in report.results if r.name == "pizza"}
    assert pizza["stateful"].metrics["session_survived"] is False
    assert pizza["stateless"].metrics["items_lost"] == 0
    atm = {r.profile: r for r in report.results if r.name == "atm"}
    assert atm["stateful"].metrics["distinct_answers"] > 1
    assert atm["stateless"].metrics["violations"] == 0
    _check_reports(report, tmp_path)


def _result(name: str, profile: str, **metrics: object) -> Result:
    return Result(name, profile, {"held": True}, dict(metrics), claims=SCENARIOS[name].claims)


def test_judges_read_the_numbers(tmp_path: Path) -> None:
    skew = {
        "stateful": _result("sticky-skew", "stateful", max_over_mean=1.6, per_replica={"r1": 9}),
        "stateless": _result("sticky-skew", "stateless", max_over_mean=1.0, per_replica={"r1": 3}),
    }
    assert SCENARIOS["sticky-skew"].judge(skew)[0] == "confirmed"
    skew["stateful"].metrics["max_over_mean"] = 1.02
    assert SCENARIOS["sticky-skew"].judge(skew)[0] == "refuted"

    def pizza(survived: bool, lost: int, profile: str) -> Result:
        return _result("pizza", profile, session_survived=survived, items_lost=lost, items_acked=2)

    runs = {"stateful": pizza(False, 2, "stateful"), "stateless": pizza(True, 0, "stateless")}
    assert SCENARIOS["pizza"].judge(runs)[0] == "confirmed"
    runs["stateless"] = pizza(True, 1, "stateless")
    assert SCENARIOS["pizza"].judge(runs)[0] == "partly true"

    report = Report(started=now(), results=[*skew.values()])
    judge(report)
    assert set(report.verdicts) == {"C1", "C3"}
    assert "C3" in render_html(report)
    _check_reports(report, tmp_path)


def test_every_claim_is_known() -> None:
    assert {c for s in SCENARIOS.values() for c in s.claims} <= set(CLAIMS)
