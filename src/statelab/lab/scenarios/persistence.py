"""C14: does the shared store protect what the replicas handed it?

- ``redis-restart``: Redis is killed with SIGKILL under a steady write load (cart
  adds) and started again on the same data. Three persistence modes: none (the
  control: a restarted Redis must come back empty, or the scenario proves nothing),
  an append-only file fsynced every second, and one fsynced on every write.
  Acknowledged writes lost, sessions lost, time to recover, what clients saw.
- ``redis-failover``: the Redis *primary* is killed with SIGKILL under steady cart
  adds, and a replica takes over. Redis replicates asynchronously: a write the
  primary acknowledged but had not yet sent on is lost when a replica is promoted.
  Variants: Sentinel with the default (asynchronous) replication; the same with
  WAIT 1 on every scripted or transactional write and min-replicas-to-write 1
  (what that costs in write latency, what it saves); and a Redis Cluster, where
  only the keys of the dead primary's slots wait for its replica while the other
  primaries go on. Measured: acknowledged writes and how many were lost, seconds
  with nowhere to write, what clients were answered meanwhile.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import TypedDict

from redis.crc import key_slot

from statelab.lab.chatter import Chatter
from statelab.lab.deployment import redis_processes
from statelab.lab.framework import (
    PIZZA,
    Context,
    Played,
    Run,
    Scenario,
    Variant,
    closing,
    percentile,
)
from statelab.lab.scenarios.chat import delivery
from statelab.lab.scenarios.crash import steady_shoppers
from statelab.lab.shopper import Shopper
from statelab.state import keys


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


REDIS_RESTART = Scenario(
    "redis-restart", ("C14",),
    "kill -9 of Redis under writes: no persistence (control), AOF everysec, AOF always",
    persistence_modes, play_redis_restart,
    lambda m: f"{m['items_lost']}/{m['acknowledged_adds']} acknowledged writes lost, "
              f"back in {m['seconds_to_recover']} s",
)  # fmt: skip


# -- redis-failover ---------------------------------------------------------------------


class FailoverMetrics(TypedDict):
    topology: str  # sentinel or cluster
    wait_replicas: int  # WAIT / min-replicas-to-write (0: asynchronous replication)
    killed: str  # the Redis primary killed with SIGKILL
    users: int
    acknowledged_writes: int  # cart adds answered 200
    acknowledged_lost: int  # of those, missing from the carts afterwards
    applied_unacknowledged: int  # adds answered with an error that took effect anyway
    seconds_unwritable: float | None  # from the kill until writes succeed for good
    writes_during_outage: int  # adds acknowledged meanwhile (other cluster primaries)
    users_affected: int  # users who saw a failure after the kill
    failed_requests: int
    answers_503: int
    answers_503_without_retry_after: int
    answers_500: int
    no_answer: int
    write_p50_ms: float  # acknowledged adds before the kill: the cost of the setting
    write_p99_ms: float
    chat_acknowledged: int  # chat messages acknowledged to their sender meanwhile
    chat_lost: int  # deliveries of those that never reached a member (after catch-up)
    chat_duplicates: int
    explanation: str


@dataclass
class _Writes:
    """What one user's cart adds came to."""

    acked: int = 0
    before_kill_ms: list[float] = field(default_factory=list)
    acked_at: list[float] = field(default_factory=list)
    no_retry_after: int = 0
    failed_after_kill: int = 0


async def _keep_adding(
    user: Shopper, seen: _Writes, killed: list[float], stop: asyncio.Event
) -> None:
    """Add one pizza at a time until ``stop``; log in again when the session is gone."""
    while not stop.is_set():
        began, at = time.perf_counter(), time.time()
        r = await user.request("POST", "/api/cart/items", json={"item_id": PIZZA, "quantity": 1})
        if r is not None and r.status_code == 200:
            seen.acked += 1
            seen.acked_at.append(at)
            if not killed:
                seen.before_kill_ms.append((time.perf_counter() - began) * 1000)
        elif r is not None and r.status_code == 401:
            await user.login()
        else:
            seen.failed_after_kill += bool(killed)
            if r is not None and r.status_code == 503 and "retry-after" not in r.headers:
                seen.no_retry_after += 1
        await asyncio.sleep(0.01)


async def _primary_to_kill(ctx: Context) -> str:
    """The primary; in a cluster, the first that does not hold the key every request
    reads (the shared menu cache): without it nobody could shop, which would hide
    what a cluster is for — the other users' keys live on other primaries."""
    processes = await redis_processes(ctx.deployment)
    primaries = [p for p in processes if p.get("role") == "primary"]
    shared = key_slot(keys.menu().encode())
    ordinary = [
        p for p in primaries if not any(lo <= shared <= hi for lo, hi in p.get("slot_ranges", []))
    ]
    if not primaries:
        raise RuntimeError(f"no Redis primary to kill: {processes}")
    return str((ordinary or primaries)[0]["name"])


async def _cart_of(user: Shopper, within: float = 20.0) -> dict[int, int]:
    """The user's cart, asked until the shop answers (it may still be recovering)."""
    deadline = time.monotonic() + within
    while (cart := await user.cart()) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{user.name}'s cart stayed unreadable after the failover")
        await asyncio.sleep(0.2)
    return cart


async def play_redis_failover(ctx: Context) -> Played:
    # Enough users that, in a cluster, some keep all their keys off the killed primary.
    users = [ctx.shopper(f"fo-{i}-{uuid.uuid4().hex[:4]}") for i in range(ctx.scale(12, 24))]
    talkers = [ctx.shopper(f"fo-chat-{i}-{uuid.uuid4().hex[:4]}") for i in range(2)]
    seen = {u.name: _Writes() for u in users}
    chatters: list[Chatter] = []
    try:
        for u in [*users, *talkers]:
            await u.register_and_login()
        chatters = await _in_one_room(ctx, talkers)
        ctx.log.outcomes.clear()  # count the failover, not the logins
        stop, killed = asyncio.Event(), list[float]()
        load = [asyncio.create_task(_keep_adding(u, seen[u.name], killed, stop)) for u in users]
        load += [asyncio.create_task(_keep_talking(c, stop)) for c in chatters]
        await asyncio.sleep(ctx.scale(2, 5))
        victim = await _primary_to_kill(ctx)
        await ctx.deployment.kill(victim)
        killed.append(time.time())  # the signal was sent before the kill call returned
        back = await recovered(ctx, killed[0], within=30)
        await asyncio.sleep(1)
        stop.set()
        await asyncio.gather(*load)
        carts = {u.name: await _cart_of(u) for u in users}
        chat = await _chat_delivery(chatters)
    finally:
        for chatter in chatters:
            await chatter.close()
        await closing(*users, *talkers)
    metrics = _failover_metrics(ctx, victim, killed[0], back, seen, carts, chat)
    # Chat messages live in SQL; a batch whose publish failed during the failover is
    # published again once Redis answers (RedisChat keeps it), so every acknowledged
    # message must reach every member.
    invariants = {
        "clients saw 503, never 500": metrics["answers_500"] == 0,
        "writes resumed after the failover": back is not None,
        "every acknowledged chat message delivered": metrics["chat_lost"] == 0,
    }
    return Played(invariants, dict(metrics), await ctx.timeline())


async def _in_one_room(ctx: Context, talkers: list[Shopper]) -> list[Chatter]:
    """Two users in one chat room, each with a socket through the load balancer."""
    created = await talkers[0].request("POST", "/api/chat/rooms", json={"name": "failover"})
    assert created is not None and created.status_code == 201, "could not create a room"
    room = str(created.json()["id"])
    ws_url = ctx.url.replace("http://", "ws://") + "/ws/chat"
    chatters = []
    for talker in talkers:
        chatter = Chatter(talker, ws_url, room)
        await chatter.connect()
        if not await chatter.join():
            raise RuntimeError(f"{talker.name} could not join the room: {chatter.errors}")
        chatters.append(chatter)
    return chatters


async def _keep_talking(chatter: Chatter, stop: asyncio.Event) -> None:
    """A message every 0.2 s until ``stop`` (unacknowledged ones are re-sent on reconnect)."""
    sent = 0
    while not stop.is_set():
        await chatter.say(f"{chatter.shopper.name}-{sent}", f"message {sent}")
        sent += 1
        await asyncio.sleep(0.2)


async def _chat_delivery(chatters: list[Chatter]) -> dict[str, object]:
    """What every member received of the messages acknowledged to their senders."""
    await asyncio.gather(*(c.flush(within=10) for c in chatters))
    expected = {(c.shopper.name, m) for c in chatters for m in c.acked}
    waits = await asyncio.gather(*(c.settle(expected, within=15) for c in chatters))
    return delivery(chatters, expected, list(waits))


def _failover_metrics(
    ctx: Context,
    victim: str,
    killed: float,
    back: float | None,
    seen: dict[str, _Writes],
    carts: dict[str, dict[int, int]],
    chat: dict[str, object],
) -> FailoverMetrics:
    after = [o for o in ctx.log.outcomes if o.at >= killed]
    failures = [o for o in after if o.status == 0 or o.status >= 500]
    outage_end = killed + (back or 0.0)
    steady = sorted(ms for w in seen.values() for ms in w.before_kill_ms)
    redis = ctx.status.get("redis") or {}
    metrics = FailoverMetrics(
        topology=str(redis.get("topology", "")),
        wait_replicas=int(redis.get("wait_replicas", 0)),
        killed=victim,
        users=len(seen),
        acknowledged_writes=sum(w.acked for w in seen.values()),
        acknowledged_lost=sum(
            max(0, w.acked - carts[name].get(PIZZA, 0)) for name, w in seen.items()
        ),
        applied_unacknowledged=sum(
            max(0, carts[name].get(PIZZA, 0) - w.acked) for name, w in seen.items()
        ),
        seconds_unwritable=back,
        writes_during_outage=sum(
            killed <= at <= outage_end for w in seen.values() for at in w.acked_at
        ),
        users_affected=sum(w.failed_after_kill > 0 for w in seen.values()),
        failed_requests=len(failures),
        answers_503=sum(o.status == 503 for o in after),
        answers_503_without_retry_after=sum(w.no_retry_after for w in seen.values()),
        answers_500=sum(o.status == 500 for o in after),
        no_answer=sum(o.status == 0 for o in after),
        write_p50_ms=percentile(steady, 50),
        write_p99_ms=percentile(steady, 99),
        chat_acknowledged=_count(chat, "acknowledged"),
        chat_lost=_count(chat, "lost"),
        chat_duplicates=_count(chat, "duplicates"),
        explanation="",
    )
    metrics["explanation"] = _explain(metrics, ctx.previous.get("redis-failover", "async"))
    return metrics


def _count(counted: dict[str, object], key: str) -> int:
    value = counted[key]
    assert isinstance(value, int)
    return value


def _explain(m: FailoverMetrics, control: Run | None) -> str:
    """The run in one plain sentence, built from its numbers."""
    lost = f"{m['acknowledged_lost']} of {m['acknowledged_writes']} acknowledged cart adds"
    outage = (
        f"{m['seconds_unwritable']} s" if m["seconds_unwritable"] is not None else "the whole run"
    )
    failed = (
        f"{m['failed_requests']} requests failed ({m['answers_500']} with a 500), and the chat "
        f"lost {m['chat_lost']} deliveries of {m['chat_acknowledged']} acknowledged messages"
    )
    if m["topology"] == "cluster":
        return (
            f"Killing one of the cluster's primaries ({m['killed']}, not the one holding the "
            "menu every request reads) left the keys of its slots "
            f"unwritable for {outage} ({m['users_affected']} of {m['users']} users saw errors) "
            f"while the other primaries acknowledged {m['writes_during_outage']} writes "
            f"meanwhile; asynchronous replication lost {lost}; {failed}."
        )
    if not m["wait_replicas"]:
        return (
            f"Asynchronous replication lost {lost} when the primary ({m['killed']}) was killed; "
            f"no primary took writes for {outage}, and {failed}."
        )
    said = (
        f"With WAIT {m['wait_replicas']} (and min-replicas-to-write {m['wait_replicas']}) "
        f"{lost} were lost; no primary took writes for {outage}, and {failed}"
    )
    if control is None:
        return (
            f"{said}; writes took {m['write_p50_ms']} ms at p50 (no asynchronous run to compare)."
        )
    base = float(control.metrics["write_p50_ms"])
    delta = round(m["write_p50_ms"] - base, 2)
    return (
        f"{said}; writes took {abs(delta)} ms {'longer' if delta >= 0 else 'less'} at p50 than "
        f"with asynchronous replication ({m['write_p50_ms']} vs {base} ms), where "
        f"{control.metrics['acknowledged_lost']} of {control.metrics['acknowledged_writes']} "
        "were lost."
    )


def failover_variants(quick: bool) -> list[Variant]:
    """Asynchronous replication (the default), the same with WAIT 1, and a cluster."""
    return [
        Variant("async", replicas=2, options=("--redis", "sentinel")),
        Variant("wait", replicas=2, options=("--redis", "sentinel", "--redis-wait", "1")),
        Variant("cluster", replicas=2, options=("--redis", "cluster")),
    ]


REDIS_FAILOVER = Scenario(
    "redis-failover", ("C14",),
    "kill -9 of the Redis primary under writes: Sentinel with asynchronous replication, "
    "the same with WAIT 1, and one primary of a Redis Cluster",
    failover_variants, play_redis_failover,
    lambda m: f"{m['acknowledged_lost']}/{m['acknowledged_writes']} acknowledged writes lost, "
              f"{m['seconds_unwritable']} s unwritable, {m['failed_requests']} failed",
)  # fmt: skip

SCENARIOS = (REDIS_RESTART, REDIS_FAILOVER)
