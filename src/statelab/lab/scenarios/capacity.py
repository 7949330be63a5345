"""C5: does holding sessions in the replica put a hard cap on it?

One replica is put in a memory cgroup that lets it take a headroom more than it
holds when the scenario begins (``--set headroom_mb=N``); users keep logging in
until the replica is killed by the kernel, starts refusing, or has taken as many
logins as the memory placement managed (and a quarter again) without trouble. The same
run with sessions in Redis is the control: the replica should stay flat while
Redis grows. Bytes per session are measured on both sides.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Literal, TypedDict

import httpx

from statelab.lab.framework import Context, Knob, Played, Scenario, Variant
from statelab.lab.shopper import PASSWORD

Outcome = Literal["killed", "refused", "held"]
BATCH = 500


class Point(TypedDict):
    sessions: int
    replica_rss_bytes: int
    redis_used_bytes: int


class MemoryMetrics(TypedDict):
    limit_bytes: int
    headroom_bytes: int
    outcome: Outcome
    sessions_made: int
    sessions_at_cap: int | None
    sessions_alive_after: int
    sessions_sampled: int
    replica_growth_bytes: int
    redis_growth_bytes: int
    replica_bytes_per_session: int | None
    redis_bytes_per_session: int | None
    points: list[Point]


async def _replica(ctx: Context) -> dict[str, Any]:
    status = await ctx.deployment.status()
    return dict(status["replicas"][0])


async def _redis_used(ctx: Context) -> int:
    if ctx.placements.get("session") not in ("redis", "jwt"):
        return 0
    return int((await ctx.deployment.redis_stats()).get("used_memory", 0))


def _target(ctx: Context) -> int:
    """How many logins the run may make: until the cap for memory sessions; for the
    control, a quarter again as many as the memory placement reached."""
    asked = ctx.knob("max_sessions", 0)
    if asked:
        return int(asked)
    capped = ctx.previous.get("memory", "memory")
    if capped is not None and capped.metrics.get("sessions_at_cap"):
        return int(capped.metrics["sessions_at_cap"] * 1.25)
    return ctx.scale(40_000, 200_000)


async def play_memory(ctx: Context) -> Played:
    replica = await _replica(ctx)
    rid, url = replica["id"], replica["url"]
    headroom = int(ctx.knob("headroom_mb", ctx.scale(12, 16))) * 2**20
    rss0, redis0 = int(replica["rss_bytes"]), await _redis_used(ctx)
    limited = await ctx.deployment.limit_memory(rid, headroom)
    limit = int(limited["memory_limit_bytes"])
    name = f"mem-{uuid.uuid4().hex[:6]}"
    creds = {"username": name, "password": PASSWORD}
    points = [Point(sessions=0, replica_rss_bytes=rss0, redis_used_bytes=redis0)]
    samples: list[str] = []  # every 100th session cookie, to check afterwards
    made, outcome, target = 0, "held", _target(ctx)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await client.post("/api/auth/register", json=creds)
        gate = asyncio.Semaphore(16)

        async def login(n: int) -> int:
            """1 for a new session, 0 for a refusal, -1 when the replica is gone."""
            async with gate:
                try:
                    r = await client.post("/api/auth/login", json=creds, headers={"Cookie": ""})
                except httpx.TransportError:
                    return -1
            if r.status_code != 200:
                return 0
            if n % 100 == 0 and (cookie := r.cookies.get("statelab_session")):
                samples.append(cookie)
            return 1

        while made < target and outcome == "held":
            answers = await asyncio.gather(*(login(made + i) for i in range(BATCH)))
            made += sum(a == 1 for a in answers)
            alive = (await _replica(ctx))["alive"]
            if -1 in answers or not alive:
                outcome = "killed" if not alive else "refused"
            elif 0 in answers:
                outcome = "refused"
            else:
                rss = int((await _replica(ctx))["rss_bytes"])
                points.append(Point(sessions=made, replica_rss_bytes=rss,
                                    redis_used_bytes=await _redis_used(ctx)))  # fmt: skip
    if outcome == "killed":
        await ctx.deployment.start(rid)  # what an orchestrator would do
    alive_after = await _sessions_alive(url, samples)
    last = points[-1]
    grew, redis_grew = last["replica_rss_bytes"] - rss0, last["redis_used_bytes"] - redis0
    sessions = max(1, last["sessions"])
    metrics = MemoryMetrics(
        limit_bytes=limit,
        headroom_bytes=headroom,
        outcome=outcome,  # type: ignore[typeddict-item]
        sessions_made=made,
        sessions_at_cap=made if outcome != "held" else None,
        sessions_alive_after=alive_after,
        sessions_sampled=len(samples),
        replica_growth_bytes=grew,
        redis_growth_bytes=redis_grew,
        replica_bytes_per_session=round(grew / sessions) if len(points) > 1 else None,
        redis_bytes_per_session=round(redis_grew / sessions) if len(points) > 1 else None,
        points=points,
    )
    invariants = {"at least one batch of logins measured": len(points) > 1}
    if not ctx.local("session"):
        invariants["the replica held every session"] = outcome == "held"
    return Played(invariants, dict(metrics), await ctx.timeline())


async def _sessions_alive(url: str, cookies: list[str]) -> int:
    alive = 0
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for cookie in cookies:
            try:
                r = await client.get(
                    "/api/auth/me", headers={"Cookie": f"statelab_session={cookie}"}
                )
            except httpx.TransportError:
                continue
            alive += r.status_code == 200
    return alive


def capped(quick: bool) -> list[Variant]:
    return [
        Variant("memory", place={"session": "memory"}, replicas=1),
        Variant("redis", place={"session": "redis"}, replicas=1),
    ]


SCENARIOS = (
    Scenario("memory", ("C5",), "one replica in a memory cgroup, users logging in until it gives",
             capped, play_memory,
             lambda m: f"{m['outcome']} after {m['sessions_made']} sessions, "
                       f"{m['replica_bytes_per_session']} B/session in the replica, "
                       f"{m['redis_bytes_per_session']} B in Redis",
             knobs={"headroom_mb": Knob("memory above the replica's start RSS, MiB", int),
                    "max_sessions": Knob("stop after this many logins", int)}),
)  # fmt: skip
