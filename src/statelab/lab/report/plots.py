"""The report's plots, drawn by matplotlib and embedded as inline SVG.

Each function takes runs and returns a ``Figure``: the SVG markup and a caption. A
plot whose runs are missing is simply not drawn. SVG text stays text
(``svg.fonttype: none``) so the page is small and loads no font.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure as MplFigure

from statelab.lab.framework import Run

plt.rcParams.update(
    {
        "svg.fonttype": "none",
        "svg.hashsalt": "statelab",
        "font.size": 9,
        "figure.dpi": 96,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }
)

#: Events a timeline marks with a vertical line.
BREAKS = ("replica.kill", "worker.kill", "redis.restart", "rolling_restart.begin",
          "replica.added", "redis.kill", "process.exited")  # fmt: skip


@dataclass(frozen=True)
class Figure:
    svg: str
    caption: str


def _render(fig: MplFigure, caption: str) -> Figure:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return Figure(text[text.index("<svg") :], caption)


def timeline(run: Run) -> Figure | None:
    """Each request as a dot (latency over time; red when it failed), breaks as lines."""
    if run.timeline is None or not run.timeline.requests:
        return None
    t0 = run.timeline.t0
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    ok = [(r[0] - t0, max(r[3], 0.1)) for r in run.timeline.requests if 200 <= r[1] < 400]
    bad = [(r[0] - t0, max(r[3], 0.1)) for r in run.timeline.requests if not 200 <= r[1] < 400]
    for dots, size, colour, label in (
        (ok, 4, "#16a34a", "answered 2xx/3xx"),
        (bad, 6, "#dc2626", "4xx, 5xx or no answer"),
    ):
        if dots:
            ax.scatter([t for t, _ in dots], [ms for _, ms in dots], s=size, c=colour, label=label)
    marked: set[str] = set()
    for e in run.timeline.events:
        if e["event"] in BREAKS and e["t"] >= t0:
            first = e["event"] not in marked
            marked.add(e["event"])
            ax.axvline(e["t"] - t0, color="#6b7280", linestyle="--", linewidth=1,
                       label=e["event"] if first else None)  # fmt: skip
            where = (e["t"] - t0, 1)
            ax.annotate(str(e.get("target", "")), where, xycoords=("data", "axes fraction"),
                        fontsize=7, ha="left", va="top")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the scenario began")
    ax.set_ylabel("latency (ms, log scale)")
    ax.legend(loc="upper right", fontsize=7)
    caption = (
        f"{run.id}: every request the lab made (latency over time; red = failed or refused) and "
        "the cluster events that broke something (dashed)."
    )
    return _render(fig, caption)


def skew(sticky: Run, rr: Run) -> Figure:
    """Busiest replica / mean per population size: median and range."""
    fig, ax = plt.subplots(figsize=(5.5, 3))
    for run, colour, name in ((sticky, "#c2410c", "sticky"), (rr, "#1d4ed8", "round-robin")):
        sizes = run.metrics["sizes"]
        xs = [s["size"] for s in sizes]
        med = [s["median"] for s in sizes]
        err = [[m - s["low"] for m, s in zip(med, sizes, strict=True)],
               [s["high"] - m for m, s in zip(med, sizes, strict=True)]]  # fmt: skip
        ax.errorbar(xs, med, yerr=err, marker="o", capsize=4, color=colour, label=name)
    ax.axhline(1.0, color="#6b7280", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("users in the population (log scale)")
    ax.set_ylabel("busiest replica / mean")
    ax.legend()
    return _render(
        fig,
        "sticky-skew: load of the busiest replica relative to the mean, median over the seeded "
        "populations with their range, under each balancing policy (same session store).",
    )


def replica_load(sticky: Run, rr: Run) -> Figure:
    """CPU seconds each replica spent, summed over every population."""
    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    rids = sorted(set(sticky.metrics["cpu_seconds"]) | set(rr.metrics["cpu_seconds"]))
    width = 0.38
    for i, (run, colour, name) in enumerate(
        ((sticky, "#c2410c", "sticky"), (rr, "#1d4ed8", "round-robin"))
    ):
        values = [run.metrics["cpu_seconds"].get(r, 0.0) for r in rids]
        ax.bar([x + i * width for x in range(len(rids))], values, width, color=colour, label=name)
    ax.set_xticks([x + width / 2 for x in range(len(rids))], rids)
    ax.set_xlabel("replica")
    ax.set_ylabel("CPU seconds")
    ax.legend()
    return _render(fig, "sticky-skew: CPU time each replica spent serving all populations.")


def latency_cdfs(runs: list[Run]) -> Figure | None:
    """One panel per load level: the latency CDF of each configuration."""
    shares = sorted({lv["share"] for r in runs for lv in r.metrics["levels"]})
    if not shares:
        return None
    fig, axes = plt.subplots(1, len(shares), figsize=(9, 3), sharey=True, squeeze=False)
    quantiles = [q / 100 for q in range(2, 101, 2)]
    for ax, share in zip(axes[0], shares, strict=True):
        for run in runs:
            for lv in run.metrics["levels"]:
                if lv["share"] == share and lv["cdf_ms"]:
                    label = run.variant.label + (f" +{lv['delay_ms']} ms" if lv["delay_ms"] else "")
                    ax.plot(lv["cdf_ms"], quantiles[: len(lv["cdf_ms"])], label=label)
        ax.set_xscale("log")
        ax.set_title(f"{round(share * 100)} % of saturation")
        ax.set_xlabel("latency (ms, log scale)")
    axes[0][0].set_ylabel("share of requests at or below")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    return _render(
        fig,
        "latency: CDF of the cart workload at three load levels (shares of the stateful "
        "profile's saturation), per configuration and injected Redis delay (each way).",
    )


def memory(runs: list[Run]) -> Figure | None:
    """Memory against sessions created: MiB held (with the replica's limit), and what
    each session has cost so far, in the replica and in Redis, per placement."""
    if not runs:
        return None
    fig, (held, each) = plt.subplots(1, 2, figsize=(9, 3))
    for run in runs:
        pts = run.metrics["points"]
        if len(pts) < 2:
            continue
        first, rest = pts[0], pts[1:]
        xs = [p["sessions"] for p in rest]
        label = f"{run.variant.label} sessions"
        held.plot([p["sessions"] for p in pts], [p["replica_rss_bytes"] / 2**20 for p in pts],
                  marker=".", label=f"{label}: replica")  # fmt: skip
        each.plot(xs, [(p["replica_rss_bytes"] - first["replica_rss_bytes"]) / p["sessions"]
                       for p in rest], marker=".", label=f"{label}: replica")  # fmt: skip
        if any(p["redis_used_bytes"] for p in pts):
            held.plot([p["sessions"] for p in pts], [p["redis_used_bytes"] / 2**20 for p in pts],
                      linestyle="--", label=f"{label}: Redis")  # fmt: skip
            each.plot(xs, [(p["redis_used_bytes"] - first["redis_used_bytes"]) / p["sessions"]
                           for p in rest], linestyle="--", label=f"{label}: Redis")  # fmt: skip
    limit = runs[0].metrics["limit_bytes"] / 2**20
    held.axhline(limit, color="#dc2626", linewidth=1, label=f"replica limit {limit:.0f} MiB")
    held.set_xlabel("sessions created")
    held.set_ylabel("memory held (MiB)")
    held.legend(fontsize=7)
    each.set_xlabel("sessions created")
    each.set_ylabel("bytes per session so far")
    each.legend(fontsize=7)
    return _render(
        fig,
        "memory: the replica's resident memory and Redis's used memory as sessions are created "
        "(left, with the replica's cgroup limit), and the growth per session so far (right).",
    )


def timers(inproc: Run, sched: Run) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 2.8))
    for run, colour in ((inproc, "#c2410c"), (sched, "#1d4ed8")):
        counts = run.metrics["runs_before_kill"] + run.metrics["runs_after_kill"]
        ax.plot(range(1, len(counts) + 1), counts, marker="o", color=colour,
                label=run.variant.label)  # fmt: skip
    before = len(inproc.metrics["runs_before_kill"])
    ax.axvline(before + 0.5, color="#6b7280", linestyle="--", label="replica killed")
    ax.set_xlabel("period")
    ax.set_ylabel("summary runs")
    ax.legend()
    return _render(fig, "timers: how many times the periodic summary ran in each period.")


def bars(title: str, caption: str, values: dict[str, dict[str, float]], unit: str) -> Figure:
    """Grouped bars: one group per metric, one bar per configuration."""
    fig, ax = plt.subplots(figsize=(6, 2.8))
    groups = sorted({k for v in values.values() for k in v})
    width = 0.8 / max(1, len(values))
    for i, (name, series) in enumerate(values.items()):
        ax.bar([x + i * width for x in range(len(groups))],
               [series.get(g, 0.0) for g in groups], width, label=name)  # fmt: skip
    ax.set_xticks([x + width * (len(values) - 1) / 2 for x in range(len(groups))], groups)
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _render(fig, caption)


def for_claim(claim: str, runs: dict[str, Run]) -> list[Figure]:
    """The plots that explain one claim, from the runs its judge read (by id)."""
    found: list[Figure | None] = []
    get = runs.get
    if claim in ("C1", "C3") and get("sticky-skew/sticky") and get("sticky-skew/roundrobin"):
        found.append(skew(runs["sticky-skew/sticky"], runs["sticky-skew/roundrobin"]))
        found.append(replica_load(runs["sticky-skew/sticky"], runs["sticky-skew/roundrobin"]))
    if claim == "C5":
        found.append(memory([r for rid, r in runs.items() if rid.startswith("memory/")]))
    if claim == "C6":
        found.append(latency_cdfs([r for rid, r in runs.items() if rid.startswith("latency/")]))
    if claim == "C13" and get("sync-vs-shared/db") and get("sync-vs-shared/replicated"):
        found.append(_sync_bars(runs["sync-vs-shared/db"], runs["sync-vs-shared/replicated"]))
    if claim == "C16" and get("timers/inprocess") and get("timers/scheduler"):
        found.append(timers(runs["timers/inprocess"], runs["timers/scheduler"]))
    if claim in ("C2", "C4", "C9", "C11", "C12", "C14", "C8"):
        found.extend(timeline(r) for r in runs.values() if r.timeline is not None)
    return [f for f in found if f is not None]


def _sync_bars(db: Run, replicated: Run) -> Figure:
    keys = ("write_p50_ms", "write_p99_ms", "read_p50_ms", "read_p99_ms")
    values: dict[str, dict[str, float]] = {
        run.variant.label: {k.removesuffix("_ms").replace("_", " "): run.metrics[k] for k in keys}
        for run in (db, replicated)
    }
    return bars(
        "sync-vs-shared",
        "sync-vs-shared: write and read latency of one shared database against per-replica "
        "ledgers kept in sync by a replication log.",
        values,
        "ms",
    )
