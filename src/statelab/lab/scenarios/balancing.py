"""Where the load balancer sends users, and what a replica knows when they arrive.

- ``sticky-skew`` (C3, C1): seeded populations of logged-in users at several sizes.
  Each user arrives without a stickiness cookie and HAProxy assigns it a replica
  itself (sticky: with its cookie); then wrk sends cart reads as users drawn by a
  heavy-tailed (log-normal) activity weight. The session store (Redis) is the same
  under both policies: the balancing policy is the only difference. Per
  population: busiest replica / mean (HAProxy's counts), and per replica CPU
  seconds and p99 latency (server side).
- ``scale-out`` (C7): a replica is added under load; who does it serve, how soon.
- ``no-sticky`` (C17): memory sessions behind round-robin and nothing crashes: how
  often does a logged-in user reach a replica that has never heard of her?
"""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import time
import uuid
from typing import TypedDict

import httpx

from statelab.lab import load
from statelab.lab.deployment import replica_urls
from statelab.lab.framework import (
    Context,
    Knob,
    Played,
    Scenario,
    Variant,
    closing,
)
from statelab.lab.shopper import PASSWORD, Outcome, Shopper


def _sizes(value: str) -> tuple[int, ...]:
    sizes = tuple(int(v) for v in value.split(","))
    if not sizes or min(sizes) < 2:
        raise ValueError("sizes: comma-separated populations of at least 2 users")
    return sizes


class Population(TypedDict):
    size: int
    seed: int
    requests: int
    busiest_over_mean: float
    per_replica: dict[str, int]
    cpu_seconds: dict[str, float]
    p99_ms: dict[str, float | None]  # server-side, the histogram bucket's upper bound
    heaviest_user_share: float
    errors: int


class SizeSummary(TypedDict):
    size: int
    median: float
    low: float
    high: float
    populations: int


class SkewMetrics(TypedDict):
    activity: str
    populations: list[Population]
    sizes: list[SizeSummary]
    cpu_seconds: dict[str, float]


def _weights(rng: random.Random, n: int, sigma: float) -> list[float]:
    """Each user's share of the requests: log-normal activity, so a few users are
    much busier than the median one, but no single user dominates a large crowd."""
    return [rng.lognormvariate(0.0, sigma) for _ in range(n)]


async def _log_in(ctx: Context, names: list[str]) -> list[str]:
    """Register and log in each account once; their session cookies."""
    cookies: list[str] = []
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=ctx.url, timeout=30) as client:

        async def one(name: str) -> None:
            creds = {"username": name, "password": PASSWORD}
            async with gate:
                await client.post("/api/auth/register", json=creds, headers={"Cookie": ""})
                r = await client.post("/api/auth/login", json=creds, headers={"Cookie": ""})
            if r.status_code == 200 and (cookie := r.cookies.get("statelab_session")):
                cookies.append(cookie)

        await asyncio.gather(*(one(n) for n in names))
    return cookies


async def _arrive(ctx: Context, sessions: list[str]) -> list[str]:
    """Each user's first request of a new visit, without a stickiness cookie: the load
    balancer assigns a replica itself (sticky: it answers with its cookie). The
    ``Cookie`` header each user sends from then on."""
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=ctx.url, timeout=30) as client:

        async def one(session: str) -> str:
            async with gate:
                r = await client.get(
                    "/api/auth/me", headers={"Cookie": f"statelab_session={session}"}
                )
            pinned = r.cookies.get("SERVERID")
            return f"statelab_session={session}" + (f"; SERVERID={pinned}" if pinned else "")

        return list(await asyncio.gather(*(one(s) for s in sessions)))


_BUCKET = re.compile(
    r'^statelab_request_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\} ([\d.e+]+)$', re.M
)


async def _buckets(ctx: Context) -> dict[str, dict[float, float]]:
    """Each replica's latency histogram (all endpoints): upper bound -> count."""
    found: dict[str, dict[float, float]] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for rid, url in (await replica_urls(ctx.deployment)).items():
            counts: dict[float, float] = {}
            for le, value in _BUCKET.findall((await client.get(f"{url}/metrics")).text):
                bound = float("inf") if le == "+Inf" else float(le)
                counts[bound] = counts.get(bound, 0.0) + float(value)
            found[rid] = counts
    return found


def _p99(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The upper bound (ms) of the bucket holding the 99th percentile of the growth."""
    grown = {le: after[le] - before.get(le, 0.0) for le in after}
    total = grown.get(float("inf"), 0.0)
    if total <= 0:
        return None
    for le in sorted(grown):
        if grown[le] >= 0.99 * total:
            return round(le * 1000, 1) if le != float("inf") else None
    return None


async def _population(
    ctx: Context, sessions: list[str], size: int, seed: int, sigma: float, seconds: int
) -> Population:
    rng = random.Random(1000 * size + seed)
    cookies = await _arrive(ctx, rng.sample(sessions, size))
    weights = _weights(rng, size, sigma)
    users = ctx.workdir / f"skew-{size}-{seed}.users"
    users.write_text("".join(f"{w:.6f}\t{c}\n" for w, c in zip(weights, cookies, strict=True)))
    before, hist0 = await ctx.deployment.status(), await _buckets(ctx)
    result = await asyncio.to_thread(load.weighted, ctx.url, users, seed, 16, seconds)
    after, hist1 = await ctx.deployment.status(), await _buckets(ctx)
    was = {r["id"]: r for r in before["replicas"]}
    per_replica = {r["id"]: r["requests"] - was[r["id"]]["requests"] for r in after["replicas"]}
    mean = sum(per_replica.values()) / max(1, len(per_replica))
    return Population(
        size=size,
        seed=seed,
        requests=sum(per_replica.values()),
        busiest_over_mean=round(max(per_replica.values()) / mean, 3) if mean else 0.0,
        per_replica=dict(sorted(per_replica.items())),
        cpu_seconds={
            rid: round((r["cpu_seconds"] or 0.0) - (was[rid]["cpu_seconds"] or 0.0), 3)
            for rid, r in sorted((r["id"], r) for r in after["replicas"])
        },
        p99_ms={rid: _p99(hist0.get(rid, {}), h) for rid, h in sorted(hist1.items())},
        heaviest_user_share=round(max(weights) / sum(weights), 3),
        errors=result.errors,
    )


def summarise(populations: list[Population]) -> list[SizeSummary]:
    sizes = sorted({p["size"] for p in populations})
    out = []
    for size in sizes:
        ratios = [p["busiest_over_mean"] for p in populations if p["size"] == size]
        out.append(
            SizeSummary(
                size=size,
                median=round(statistics.median(ratios), 3),
                low=min(ratios),
                high=max(ratios),
                populations=len(ratios),
            )
        )
    return out


async def play_sticky_skew(ctx: Context) -> Played:
    sizes: tuple[int, ...] = ctx.knob("sizes", (12, 60, 240) if ctx.quick else (12, 120, 1200))
    count: int = ctx.knob("populations", ctx.scale(6, 10))
    sigma: float = ctx.knob("sigma", 1.0)
    seconds: int = ctx.knob("seconds", 1)
    prefix = f"skew-{uuid.uuid4().hex[:4]}"
    sessions = await _log_in(ctx, [f"{prefix}-{i}" for i in range(max(sizes))])
    assert len(sessions) == max(sizes), "not every account could log in"
    populations = [
        await _population(ctx, sessions, size, seed, sigma, seconds)
        for size in sizes
        for seed in range(count)
    ]
    total_cpu: dict[str, float] = {}
    for p in populations:
        for rid, s in p["cpu_seconds"].items():
            total_cpu[rid] = round(total_cpu.get(rid, 0.0) + s, 3)
    metrics = SkewMetrics(
        activity=f"log-normal, sigma {sigma}",
        populations=populations,
        sizes=summarise(populations),
        cpu_seconds=total_cpu,
    )
    errors = sum(p["errors"] for p in populations)
    return Played({"every request answered": errors == 0}, dict(metrics))


def sticky_or_not(quick: bool) -> list[Variant]:
    return [
        Variant("sticky", balance="sticky", place={"session": "redis"}),
        Variant("roundrobin", balance="roundrobin", place={"session": "redis"}),
    ]


# ------------------------------------------------------------------------ scale-out


class ScaleOutMetrics(TypedDict):
    new_replica: str
    seconds_to_start: float
    seconds_to_first_request: float | None
    share_first_5s: float
    share_after_add: float
    fair_share: float
    per_replica_after_add: dict[str, int]
    regulars: int
    regulars_on_new_replica: int
    newcomers_on_new_replica: int


async def play_scale_out(ctx: Context) -> Played:
    regulars = [ctx.shopper(f"reg-{i}-{uuid.uuid4().hex[:4]}") for i in range(ctx.scale(6, 9))]
    newcomers: list[Shopper] = []
    window = ctx.scale(6, 10)
    try:
        for u in regulars:
            await u.register_and_login()
        stop = asyncio.Event()

        async def browse(u: Shopper) -> None:
            while not stop.is_set():
                await u.cart()
                await asyncio.sleep(0.02)

        tasks = [asyncio.create_task(browse(u)) for u in regulars]
        await asyncio.sleep(1)
        homes = {u.name: u.last_served_by for u in regulars}
        asked = time.time()
        added = await ctx.deployment.add()
        new_id = str(added["id"])
        ready = time.time()  # started, ready, and in the load balancer
        for i in range(ctx.scale(4, 6)):  # new users keep arriving
            u = ctx.shopper(f"new-{i}-{uuid.uuid4().hex[:4]}")
            newcomers.append(u)
            await u.register_and_login()
            tasks.append(asyncio.create_task(browse(u)))
            await asyncio.sleep(window / 6)
        await asyncio.sleep(window / 3)
        stop.set()
        await asyncio.gather(*tasks)
        after = [o for o in ctx.log.outcomes if o.at >= ready]
        first5 = [o for o in after if o.at < ready + 5 and o.path == "/api/cart"]
        first = min((o.at for o in after if o.served_by == new_id), default=None)
        replicas = len((await ctx.deployment.status())["replicas"])
        moved = sum(1 for u in regulars if u.last_served_by == new_id != homes[u.name])
        metrics = ScaleOutMetrics(
            new_replica=new_id,
            seconds_to_start=round(ready - asked, 2),
            seconds_to_first_request=round(first - ready, 2) if first else None,
            share_first_5s=round(_share(first5, new_id), 3),
            share_after_add=round(_share(after, new_id), 3),
            fair_share=round(1 / replicas, 3),
            per_replica_after_add=_count_by(after),
            regulars=len(regulars),
            regulars_on_new_replica=moved,
            newcomers_on_new_replica=sum(1 for u in newcomers if u.last_served_by == new_id),
        )
        invariants = {"the new replica serves requests": first is not None}
        return Played(invariants, dict(metrics), await ctx.timeline())
    finally:
        await closing(*regulars, *newcomers)


def _share(outcomes: list[Outcome], rid: str) -> float:
    return sum(o.served_by == rid for o in outcomes) / max(1, len(outcomes))


def _count_by(outcomes: list[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        if o.served_by:
            counts[o.served_by] = counts.get(o.served_by, 0) + 1
    return dict(sorted(counts.items()))


def stateful_and_stateless(quick: bool) -> list[Variant]:
    return [Variant("stateful", "stateful"), Variant("stateless")]


# ------------------------------------------------------------------------ no-sticky


class NoStickyMetrics(TypedDict):
    requests: int
    not_logged_in_answers: int
    replicas_seen: list[str]
    answered_by: dict[str, int]
    crashes: int


async def play_no_sticky(ctx: Context) -> Played:
    """One user logs in and browses; nothing is broken on purpose."""
    user = ctx.shopper(f"server2-{uuid.uuid4().hex[:6]}")
    requests = ctx.scale(30, 90)
    try:
        assert await user.register_and_login(), "the user could not log in"
        ctx.log.outcomes.clear()
        forgotten = 0
        for _ in range(requests):
            if not await user.logged_in() and user.last_status == 401:
                forgotten += 1
        exits = [e for e in await ctx.deployment.events(ctx.started)
                 if e.get("event") == "process.exited"]  # fmt: skip
        metrics = NoStickyMetrics(
            requests=requests,
            not_logged_in_answers=forgotten,
            replicas_seen=sorted(ctx.log.served_by()),
            answered_by=dict(sorted(ctx.log.served_by().items())),
            crashes=len(exits),
        )
        return Played({"nothing crashed": not exits}, dict(metrics), await ctx.timeline())
    finally:
        await closing(user)


def memory_sessions(quick: bool) -> list[Variant]:
    return [
        Variant("roundrobin", "stateful", balance="roundrobin"),
        Variant("sticky", "stateful", balance="sticky"),
    ]


SCENARIOS = (
    Scenario("sticky-skew", ("C3", "C1"),
             "seeded populations of users at several sizes, sticky vs round-robin",
             sticky_or_not, play_sticky_skew,
             lambda m: "busiest/mean " + ", ".join(f"{s['size']} users {s['median']}"
                                                   for s in m["sizes"]),
             knobs={"sizes": Knob("population sizes, e.g. 12,120,1200", _sizes),
                    "populations": Knob("seeded populations per size", int),
                    "sigma": Knob("log-normal sigma of user activity", float),
                    "seconds": Knob("seconds of load per population", int)}),
    Scenario("scale-out", ("C7",), "a replica added under load",
             stateful_and_stateless, play_scale_out,
             lambda m: f"new replica share {m['share_first_5s']:.0%} in 5 s (fair "
                       f"{m['fair_share']:.0%}), {m['regulars_on_new_replica']} users moved"),
    Scenario("no-sticky", ("C17",), "memory sessions behind round-robin, nothing broken",
             memory_sessions, play_no_sticky,
             lambda m: f"{m['not_logged_in_answers']}/{m['requests']} answers 'not logged in'"),
)  # fmt: skip
