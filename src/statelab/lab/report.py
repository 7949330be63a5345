"""What the lab saw: the terminal tables, ``report.json`` and a self-contained
``report.html`` (plots drawn as inline SVG; no script or network fetch)."""

from __future__ import annotations

import html
import json
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from statelab.lab.scenarios import CLAIMS, Result, summary

PROFILE_COLUMNS = ("stateful", "stateless", "token")
COLOURS = {"stateful": "#c2410c", "stateless": "#1d4ed8", "token": "#047857"}


@dataclass
class Report:
    started: datetime
    results: list[Result] = field(default_factory=list)
    verdicts: dict[str, tuple[str, str]] = field(default_factory=dict)  # claim -> verdict

    @property
    def ok(self) -> bool:
        return all(r.held for r in self.results)

    def as_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "started": self.started.isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "claims": {c: {"text": CLAIMS[c], "verdict": v, "reason": why}
                       for c, (v, why) in sorted(self.verdicts.items(), key=_claim_order)},
            "scenarios": [
                {
                    "name": r.name,
                    "claim": ", ".join(r.claims),
                    "profile": r.profile,
                    "verdict": r.verdict,
                    "invariants": r.invariants,
                    "metrics": r.metrics,
                    "timeline": r.timeline,
                }
                for r in self.results
            ],
        }  # fmt: skip


def _claim_order(item: tuple[str, Any]) -> int:
    return int(item[0].removeprefix("C"))


# ----------------------------------------------------------------------- terminal


def _cell(results: list[Result], claim: str, profile: str) -> str:
    found = [r for r in results if claim in r.claims and r.profile == profile]
    return "\n".join(summary(r) for r in found) or "-"


def print_report(report: Report, console: Console | None = None) -> None:
    console = console or Console(width=max(140, Console().width))
    table = Table(title="statelab: the claims, measured", show_lines=True)
    table.add_column("claim")
    for profile in PROFILE_COLUMNS:
        table.add_column(profile)
    table.add_column("verdict")
    for claim, (verdict, reason) in sorted(report.verdicts.items(), key=_claim_order):
        cells = [_cell(report.results, claim, p) for p in PROFILE_COLUMNS]
        table.add_row(f"{claim} {CLAIMS[claim]}", *cells, f"[b]{verdict}[/b]\n{reason}")
    console.print(table)
    broken = [r for r in report.results if not r.held]
    for r in broken:
        failed = [name for name, ok in r.invariants.items() if not ok]
        console.print(f"[red]invariant violated[/red] {r.name}/{r.profile}: {', '.join(failed)}")


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


# ---------------------------------------------------------------------------- HTML


def _esc(value: object) -> str:
    return html.escape(str(value))


def _bars(title: str, series: dict[str, dict[str, int]]) -> str:
    """Grouped bars: one group per profile, one bar per replica."""
    width, height, pad = 520, 200, 30
    groups = [(p, counts) for p, counts in series.items() if counts]
    peak = max((v for _, c in groups for v in c.values()), default=1) or 1
    bars, x = [], pad
    for profile, counts in groups:
        for rid, value in counts.items():
            h = (height - 2 * pad) * value / peak
            bars.append(
                f'<rect x="{x}" y="{height - pad - h:.1f}" width="22" height="{h:.1f}" '
                f'fill="{COLOURS.get(profile, "#555")}"><title>{_esc(profile)} {_esc(rid)}: '
                f"{value}</title></rect>"
                f'<text x="{x + 11}" y="{height - pad + 12}" font-size="9" '
                f'text-anchor="middle">{_esc(rid)}</text>'
            )
            x += 26
        bars.append(
            f'<text x="{x - 13 * len(counts) - 4}" y="{height - 4}" font-size="10" '
            f'text-anchor="middle">{_esc(profile)}</text>'
        )
        x += 24
    return _svg(title, width, height, "".join(bars))


def _cdf(title: str, series: dict[str, list[float]]) -> str:
    """Latency CDFs: x = milliseconds, y = share of requests at or below."""
    width, height, pad = 520, 220, 34
    peak = max((max(v) for v in series.values() if v), default=1.0) or 1.0
    lines = []
    for profile, values in series.items():
        if not values:
            continue
        points = " ".join(
            f"{pad + (width - 2 * pad) * v / peak:.1f},"
            f"{height - pad - (height - 2 * pad) * i / (len(values) - 1 or 1):.1f}"
            for i, v in enumerate(values)
        )
        lines.append(
            f'<polyline fill="none" stroke-width="2" stroke="{COLOURS.get(profile, "#555")}" '
            f'points="{points}"><title>{_esc(profile)}</title></polyline>'
        )
    axes = (
        f'<text x="{width - pad}" y="{height - 8}" font-size="10" text-anchor="end">'
        f"{peak:.1f} ms</text>"
        f'<text x="{pad}" y="{height - 8}" font-size="10">0 ms</text>'
        f'<text x="4" y="{pad}" font-size="10">100%</text>'
    )
    legend = "".join(
        f'<text x="{width - pad}" y="{pad + 14 * i}" font-size="11" text-anchor="end" '
        f'fill="{COLOURS.get(p, "#555")}">{_esc(p)}</text>'
        for i, p in enumerate(series)
    )
    return _svg(title, width, height, axes + legend + "".join(lines))


def _timeline_svg(title: str, timeline: dict[str, Any]) -> str:
    """Each request as a dot (x time, y latency; red when it failed), events as lines."""
    width, height, pad = 720, 220, 34
    rows, events = timeline["requests"], timeline["events"]
    t0 = float(timeline["t0"])
    if not rows:
        return ""
    end = float(max(max(r[0] for r in rows), max((e["t"] for e in events), default=t0)) - t0) or 1.0
    peak = float(max(r[3] for r in rows)) or 1.0

    def x(t: float) -> float:
        return pad + (width - 2 * pad) * (t - t0) / end

    dots = "".join(
        f'<circle cx="{x(t):.1f}" cy="{height - pad - (height - 2 * pad) * ms / peak:.1f}" '
        f'r="1.6" fill="{"#16a34a" if 200 <= status < 300 else "#dc2626"}"/>'
        for t, status, _, ms in rows
    )
    marks = "".join(
        f'<line x1="{x(e["t"]):.1f}" x2="{x(e["t"]):.1f}" y1="{pad}" y2="{height - pad}" '
        f'stroke="#6b7280" stroke-dasharray="3,3"/>'
        f'<text x="{x(e["t"]) + 2:.1f}" y="{pad - 4 - 10 * (i % 2)}" font-size="9">'
        f"{_esc(e['event'])} {_esc(e['target'])}</text>"
        for i, e in enumerate(events)
    )
    axes = (
        f'<text x="{width - pad}" y="{height - 8}" font-size="10" text-anchor="end">'
        f'{end:.1f} s</text><text x="4" y="{pad + 8}" font-size="10">{peak:.0f} ms</text>'
    )
    return _svg(title, width, height, axes + marks + dots)


def _svg(title: str, width: int, height: int, body: str) -> str:
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">'
        f'<rect width="100%" height="100%" fill="#f9fafb"/>{body}</svg>'
        f"<figcaption>{_esc(title)}</figcaption></figure>"
    )


_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2rem auto;padding:0 1rem;
color:#111}
table{border-collapse:collapse;width:100%;margin:1rem 0}td,th{border:1px solid #d1d5db;
padding:.4rem;vertical-align:top;text-align:left}th{background:#f3f4f6}.confirmed{color:#047857}
.refuted{color:#b91c1c}.partly{color:#b45309}figure{display:inline-block;margin:.5rem}
figcaption{font-size:12px;color:#374151}code{font-size:13px}.bad{color:#b91c1c;font-weight:600}
"""


def render_html(report: Report) -> str:
    data = report.as_json()
    rows = []
    for claim, entry in data["claims"].items():
        cells = "".join(
            f"<td>{_esc(_cell(report.results, claim, p)).replace(chr(10), '<br>')}</td>"
            for p in PROFILE_COLUMNS
        )
        css = entry["verdict"].split()[0]
        verdict = f"<b>{_esc(entry['verdict'])}</b><br>{_esc(entry['reason'])}"
        rows.append(
            f"<tr><td><b>{claim}</b> {_esc(entry['text'])}</td>{cells}"
            f'<td class="{css}">{verdict}</td></tr>'
        )
    head = "".join(f"<th>{p}</th>" for p in PROFILE_COLUMNS)
    figures = _figures(report)
    details = "".join(_details(r) for r in report.results)
    return (
        f"<!doctype html><html lang=en><meta charset=utf-8><title>statelab report</title>"
        f"<style>{_STYLE}</style><h1>statelab: where state lives, measured</h1>"
        f"<p>Started {_esc(data['started'])} on {_esc(data['machine']['cpus'])} CPUs, "
        f"Python {_esc(data['machine']['python'])}.</p>"
        f"<table><tr><th>claim</th>{head}<th>verdict</th></tr>{''.join(rows)}</table>"
        f"<h2>Plots</h2>{figures}<h2>Scenarios</h2>{details}</html>"
    )


def _figures(report: Report) -> str:
    by = {(r.name, r.profile): r for r in report.results}
    parts = []
    skew = {p: by[("sticky-skew", p)].metrics["per_replica"] for n, p in by if n == "sticky-skew"}
    if skew:
        parts.append(_bars("sticky-skew: requests per replica", skew))
    cdfs = {p: by[("latency", p)].metrics["cdf_ms"] for n, p in by if n == "latency"}
    if cdfs:
        parts.append(_cdf("latency: CDF of the cart workload at a moderate rate", cdfs))
    for r in report.results:
        if r.timeline:
            parts.append(_timeline_svg(f"{r.name} / {r.profile}: requests and events", r.timeline))
    return "".join(parts)


def _details(r: Result) -> str:
    invariants = "".join(
        f'<li class="{"" if ok else "bad"}">{_esc(name)}: {"held" if ok else "VIOLATED"}</li>'
        for name, ok in r.invariants.items()
    )
    metrics = _esc(json.dumps(r.metrics, indent=1, default=str))
    return (
        f"<h3>{_esc(r.name)} / {_esc(r.profile)} ({_esc(', '.join(r.claims))})</h3>"
        f"<ul>{invariants}</ul><pre><code>{metrics}</code></pre>"
    )


def write_reports(report: Report, json_path: Path | None, html_path: Path | None) -> None:
    if json_path is not None:
        json_path.write_text(json.dumps(report.as_json(), indent=1, default=str) + "\n")
    if html_path is not None:
        html_path.write_text(render_html(report))


def now() -> datetime:
    return datetime.now(UTC)
