"""C14: does the shared store protect what the replicas handed it?

- ``redis-restart``: Redis is killed with SIGKILL under a steady write load (cart
  adds) and started again on the same data. Three persistence modes: none (the
  control: a restarted Redis must come back empty, or the scenario proves nothing),
  an append-only file fsynced every second, and one fsynced on every write.
  Acknowledged writes lost, sessions lost, time to recover, what clients saw.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TypedDict

from statelab.lab.framework import Context, Played, Scenario, Variant, closing
from statelab.lab.scenarios.crash import steady_shoppers


class RestartMetrics(TypedDict):
    persistence: str
    acknowledged_adds: int
    items_lost: int
    sessions_lost: int
    seconds_to_recover: float | None
    answers_503: int
    answers_500: int
    no_answer: int


async def recovered(ctx: Context, since: float, within: float) -> float | None:
    """Seconds from ``since`` until requests succeed again for good (half a second
    of successes after the last failure), or None."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        after = [o for o in ctx.log.outcomes if o.at >= since]
        failures = [o.at for o in after if not o.ok and o.status != 401]
        last_failure = max(failures, default=since)
        if any(o.ok and o.at > last_failure + 0.5 for o in after):
            return round(last_failure - since, 2)
    return None


async def play_redis_restart(ctx: Context) -> Played:
    users = [ctx.shopper(f"aof-{i}-{uuid.uuid4().hex[:4]}") for i in range(4)]
    try:
        for u in users:
            await u.register_and_login()
        stop = asyncio.Event()
        load = asyncio.create_task(steady_shoppers(users, stop))
        await asyncio.sleep(1.5)
        killed = time.time()
        await ctx.deployment.restart_redis("kill")
        back = await recovered(ctx, killed, within=20)
        await asyncio.sleep(1)
        stop.set()
        seen = await load
    finally:
        await closing(*users)
    during = [o for o in ctx.log.outcomes if o.at >= killed]
    persistence = str((ctx.status.get("redis") or {}).get("persistence", "everysec"))
    metrics = RestartMetrics(
        persistence=persistence,
        acknowledged_adds=seen["acknowledged_adds"],
        items_lost=seen["items_lost"],
        sessions_lost=seen["sessions_lost"],
        seconds_to_recover=back,
        answers_503=sum(o.status == 503 for o in during),
        answers_500=sum(o.status == 500 for o in during),
        no_answer=sum(o.status == 0 for o in during),
    )
    invariants = {
        "clients saw 503, never 500": metrics["answers_500"] == 0,
        "service recovered": back is not None,
    }
    if persistence != "off":
        invariants["no acknowledged write lost"] = seen["items_lost"] == 0
    return Played(invariants, dict(metrics), await ctx.timeline())


def persistence_modes(quick: bool) -> list[Variant]:
    return [
        Variant(f"aof-{mode}", options=("--redis-persistence", mode))
        for mode in ("off", "everysec", "always")
    ]


SCENARIOS = (
    Scenario("redis-restart", ("C14",),
             "kill -9 of Redis under writes: no persistence (control), AOF everysec, AOF always",
             persistence_modes, play_redis_restart,
             lambda m: f"{m['items_lost']}/{m['acknowledged_adds']} acknowledged writes lost, "
                       f"back in {m['seconds_to_recover']} s"),
)  # fmt: skip
