"""C6: does a shared store add only "slightly more latency"?

The cart workload (wrk, logged-in users through the load balancer) first saturates
the stateful profile — its rate is the yardstick — then runs paced at a quarter, a
half and three quarters of it in every variant: p50, p99 and the latency CDF at
each level, and the store calls behind each request (Redis commands over the
request path's link, SQL statements; both from the replicas' own counters).

The ``delayed`` variant puts a delaying TCP proxy between the replicas and Redis
(this kernel has no ``netem``) and measures at 0, 0.25 and 1 ms each way: the 0 ms
run is the control for the delay, through the same proxy.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import TypedDict

from statelab.lab import load
from statelab.lab.framework import Context, Knob, Played, Scenario, Variant, store_calls

SHARES = (0.25, 0.5, 0.75)


class Level(TypedDict):
    share: float
    delay_ms: float
    target_rps: float
    achieved_rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cdf_ms: list[float]
    redis_commands_per_request: float
    sql_statements_per_request: float


class LatencyMetrics(TypedDict):
    saturation_rps: float
    saturation_from: str
    levels: list[Level]
    redis_commands_per_request: float
    sql_statements_per_request: float


def _delays(value: str) -> tuple[float, ...]:
    return tuple(float(v) for v in value.split(","))


async def _level(
    ctx: Context, users: Path, share: float, saturation: float, delay: float, seconds: float
) -> Level:
    before = await store_calls(ctx.deployment)
    target = share * saturation
    result = await asyncio.to_thread(load.paced, ctx.url, users, target, seconds)
    after = await store_calls(ctx.deployment)
    # The calibration probe ran too: count per request over both runs' requests.
    requests = max(1, result.requests + round(result.rps))
    return Level(
        share=share,
        delay_ms=delay,
        target_rps=round(target),
        achieved_rps=round(result.rps),
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors,
        cdf_ms=result.cdf_ms,
        redis_commands_per_request=_per(after, before, "redis", requests),
        sql_statements_per_request=_per(after, before, "sql", requests),
    )


def _per(after: dict[str, float], before: dict[str, float], store: str, requests: int) -> float:
    return round((after.get(store, 0.0) - before.get(store, 0.0)) / requests, 2)


async def play_latency(ctx: Context) -> Played:
    users = ctx.workdir / "latency.users"
    prefix = f"lat{uuid.uuid4().hex[:4]}"
    await asyncio.to_thread(load.login_users, ctx.url, 32, users, prefix)
    seconds = float(ctx.knob("seconds", ctx.scale(2, 5)))
    stateful = ctx.previous.get("latency", "stateful")
    if stateful is not None and ctx.variant.label != "stateful":
        saturation, source = float(stateful.metrics["saturation_rps"]), "latency/stateful"
    else:
        await asyncio.to_thread(load.wrk, ctx.url, users, 32, 1)  # warm up
        full = await asyncio.to_thread(load.wrk, ctx.url, users, 64, seconds)
        saturation, source = full.rps, ctx.variant.label
    proxied = bool((ctx.status.get("redis") or {}).get("delay_proxy"))
    delays: tuple[float, ...] = ctx.knob("delays", (0.0, 0.25, 1.0) if proxied else (0.0,))
    if any(delays) and not proxied:
        raise ValueError("Redis delays need the delaying proxy: add --redis-delay-proxy")
    levels = []
    for delay in delays:
        if proxied:
            await ctx.deployment.set_redis_delay(delay)
        for share in SHARES:
            levels.append(await _level(ctx, users, share, saturation, delay, seconds))
    plain = [lv for lv in levels if lv["delay_ms"] == 0] or levels
    metrics = LatencyMetrics(
        saturation_rps=round(saturation),
        saturation_from=source,
        levels=levels,
        redis_commands_per_request=plain[-1]["redis_commands_per_request"],
        sql_statements_per_request=plain[-1]["sql_statements_per_request"],
    )
    errors = sum(lv["errors"] for lv in levels)
    return Played({"every request answered": errors == 0}, dict(metrics))


def placements(quick: bool) -> list[Variant]:
    return [
        Variant("stateful", "stateful"),
        Variant("stateless"),
        Variant("delayed", options=("--redis-delay-proxy",)),
    ]  # fmt: skip


SCENARIOS = (
    Scenario("latency", ("C6",), "the cart workload at 25/50/75 % of saturation, local vs shared",
             placements, play_latency,
             lambda m: "; ".join(f"{round(lv['share'] * 100)}% +{lv['delay_ms']} ms: p50 "
                                 f"{lv['p50_ms']} p99 {lv['p99_ms']} ms" for lv in m["levels"]),
             knobs={"seconds": Knob("measured seconds per load level", float),
                    "delays": Knob("Redis delays in ms each way, e.g. 0,0.25,1 "
                                   "(with --redis-delay-proxy)", _delays)}),
)  # fmt: skip
