"""``report.html``: one self-contained page (no script, no stylesheet or font fetched).

Per claim: the claim, its criterion, the runs it was judged on with their numbers,
the verdict with the numbers compared, a plain-words account, and the plots that
explain it. Then every run's invariants and metrics.
"""

from __future__ import annotations

import html
import json

from statelab.lab.framework import Run
from statelab.lab.report import Report
from statelab.lab.report.plots import Figure, for_claim

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2rem auto;padding:0 1rem;
color:#111}
table{border-collapse:collapse;width:100%;margin:.6rem 0}td,th{border:1px solid #d1d5db;
padding:.35rem;vertical-align:top;text-align:left}th{background:#f3f4f6}
.confirmed{color:#047857}.refuted{color:#b91c1c}.partly{color:#b45309}.not{color:#6b7280}
figure{margin:.8rem 0}figure svg{max-width:100%;height:auto}figcaption{font-size:13px;
color:#374151}code,pre{font-size:12px}.bad{color:#b91c1c;font-weight:600}
section.claim{border-top:2px solid #e5e7eb;margin-top:1.6rem}
"""


def _esc(value: object) -> str:
    return html.escape(str(value))


def _figure(f: Figure) -> str:
    return f"<figure>{f.svg}<figcaption>{_esc(f.caption)}</figcaption></figure>"


def _runs_table(runs: list[Run]) -> str:
    rows = "".join(
        f"<tr><td><code>{_esc(r.id)}</code></td><td><code>{_esc(r.variant.describe())}</code>"
        f"</td><td>{_esc(r.summary)}</td></tr>"
        for r in runs
    )
    return (
        "<table><tr><th>run</th><th>configuration (statelab scenario ... flags)</th>"
        f"<th>measured</th></tr>{rows}</table>"
    )


def _claim_section(report: Report, entry: dict[str, object]) -> str:
    by_id = {r.id: r for r in report.runs}
    read = [by_id[rid] for rid in entry["runs"] if rid in by_id]  # type: ignore[attr-defined]
    css = str(entry["verdict"]).split()[0]
    figures = "".join(_figure(f) for f in for_claim(str(entry["id"]), {r.id: r for r in read}))
    return (
        f'<section class="claim" id="{_esc(entry["id"])}"><h2>{_esc(entry["id"])}: '
        f"{_esc(entry['claim'])}</h2>"
        f"<p><b>Criterion.</b> {_esc(entry['criterion'])}</p>"
        f"{_runs_table(read) if read else ''}"
        f'<p><b>Verdict: <span class="{css}">{_esc(entry["verdict"])}</span>.</b> '
        f"{_esc(entry['reason'])}</p>"
        f"<p>{_esc(entry['story'])}</p>{figures}</section>"
    )


def _overview(report: Report) -> str:
    rows = "".join(
        f'<tr><td><a href="#{_esc(c["id"])}">{_esc(c["id"])}</a></td><td>{_esc(c["claim"])}</td>'
        f'<td class="{str(c["verdict"]).split()[0]}"><b>{_esc(c["verdict"])}</b></td></tr>'
        for c in report.claims()
    )
    return f"<table><tr><th>claim</th><th></th><th>verdict</th></tr>{rows}</table>"


def _run_details(run: Run) -> str:
    invariants = "".join(
        f'<li class="{"" if ok else "bad"}">{_esc(name)}: {"held" if ok else "VIOLATED"}</li>'
        for name, ok in run.invariants.items()
    )
    metrics = _esc(json.dumps(run.metrics, indent=1, default=str))
    return (
        f"<h3>{_esc(run.id)} ({_esc(', '.join(run.claims))}, {run.seconds} s)</h3>"
        f"<p><code>{_esc(run.variant.describe())}</code></p>"
        f"<ul>{invariants}</ul><details><summary>metrics</summary><pre>{metrics}</pre></details>"
    )


def render_html(report: Report) -> str:
    data = report.as_json()
    sections = "".join(_claim_section(report, c) for c in report.claims())
    details = "".join(_run_details(r) for r in report.runs)
    kind = "quick form" if report.quick else "full form"
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>statelab report</title>"
        f"<style>{_STYLE}</style><h1>statelab: where state lives, measured</h1>"
        f"<p>Started {_esc(data['started'])} on {_esc(data['machine']['cpus'])} CPUs, Python "
        f"{_esc(data['machine']['python'])}, {kind}: {len(report.runs)} runs.</p>"
        f"{_overview(report)}{sections}<h2>Every run</h2>{details}</html>"
    )
