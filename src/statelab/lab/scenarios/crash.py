"""Crashes and deploys of a replica that holds (or does not hold) users' state.

- ``pizza`` (C2, C1, C14): Alice logs in, adds a pizza and a drink; the replica
  that served her is killed; she adds a dessert and checks out.
- ``rolling-deploy`` (C4, C2): every replica is drained, stopped and started again
  in turn while shoppers keep browsing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TypedDict

import httpx

from statelab.lab.deployment import replica_urls
from statelab.lab.framework import (
    DESSERT,
    DRINK,
    PIZZA,
    Context,
    Played,
    Scenario,
    Variant,
    closing,
    retrying,
)
from statelab.lab.shopper import Shopper

#: Session placements whose logout-all must hold on every replica at once.
REVOCABLE = frozenset({"redis", "jwt", "db"})


class PizzaMetrics(TypedDict):
    replica_killed: str
    served_after_kill: str
    session_survived: bool
    items_acked: int
    items_lost: int
    checkout_status: int
    order_total_cents: int | None
    seconds_to_first_success: float
    logout_all_refused_everywhere: bool
    failed_requests: int


def profiles(quick: bool) -> list[Variant]:
    return [Variant("stateful", "stateful"), Variant("stateless"), Variant("token", "token")]


async def play_pizza(ctx: Context) -> Played:
    alice = ctx.shopper(f"alice-{uuid.uuid4().hex[:6]}")
    try:
        assert await alice.register_and_login(), "Alice could not log in"
        acked = [item for item in (PIZZA, DRINK) if await alice.add(item)]
        home = alice.last_served_by
        killed_at = time.monotonic()
        await ctx.deployment.kill(home)
        # Her next few requests, wherever the load balancer sends them: one answered
        # "who are you?" is a lost session (round-robin reaches every survivor).
        survived = all([await alice.logged_in() for _ in range(3)])
        if not survived:  # what a real user does: log in again (accounts are in SQL)
            await retrying(alice.login, 15)
        first_ok = time.monotonic() - killed_at
        served_after = alice.last_served_by
        await retrying(lambda: alice.add(DESSERT), 15)
        cart = await alice.cart() or {}
        lost = [item for item in acked if item not in cart]
        await alice.money("/api/account/top-up", amount_cents=5000)
        paid = await alice.checkout()
        checkout = paid.status_code if paid is not None else 0
        revoked = await _revocation_holds(ctx, alice)
        metrics = PizzaMetrics(
            replica_killed=home,
            served_after_kill=served_after,
            session_survived=survived,
            items_acked=len(acked),
            items_lost=len(lost),
            checkout_status=checkout,
            order_total_cents=paid.json()["total_cents"] if paid and checkout == 201 else None,
            seconds_to_first_success=round(first_ok, 2),
            logout_all_refused_everywhere=revoked,
            failed_requests=ctx.log.failed(),
        )
        invariants = {}
        if not ctx.local("session") or ctx.status.get("balance") == "sticky":
            # Memory sessions behind round-robin never hold long enough to pay.
            invariants["checkout succeeds after the crash"] = checkout == 201
        if not ctx.local("session"):
            invariants["session survived the crash"] = survived
        if not ctx.local("session") and not ctx.local("cart"):
            invariants["no acknowledged cart item lost"] = not lost
        if ctx.placements.get("session") in REVOCABLE:
            invariants["logout-all refused on every replica"] = revoked
        return Played(invariants, dict(metrics), await ctx.timeline())
    finally:
        await closing(alice)


async def _revocation_holds(ctx: Context, user: Shopper) -> bool:
    """After logout-all, the user's old credential is refused by every replica."""
    old_cookies, old_auth = dict(user.client.cookies), dict(user.auth)
    r = await user.request("POST", "/api/auth/logout-all")
    if r is None or r.status_code != 200:
        return False
    for url in (await replica_urls(ctx.deployment)).values():
        async with httpx.AsyncClient(base_url=url, cookies=old_cookies, timeout=5) as c:
            if (await c.get("/api/auth/me", headers=old_auth)).status_code != 401:
                return False
    return True


class RollingMetrics(TypedDict):
    acknowledged_adds: int
    items_lost: int
    sessions_lost: int
    requests: int
    failed_requests: int
    statuses: dict[str, int]
    duration_s: float


async def steady_shoppers(users: list[Shopper], stop: asyncio.Event) -> dict[str, int]:
    """Users browse and add items until ``stop``; returns what they saw and lost.

    A session is lost when a logged-in user is answered 401; the user notices and
    logs in again. An item is lost when the cart holds fewer than were acknowledged."""
    acked: dict[str, int] = {u.name: 0 for u in users}
    sessions_lost: set[str] = set()

    async def browse(u: Shopper) -> None:
        while not stop.is_set():
            if not await u.logged_in() and u.last_status == 401:
                sessions_lost.add(u.name)
                await u.login()
                continue
            if await u.add(PIZZA):
                acked[u.name] += 1
            await u.cart()
            await asyncio.sleep(0.05)

    await asyncio.gather(*(browse(u) for u in users))
    items_lost = 0
    for u in users:
        cart = await u.cart() or {}  # logged out: the anonymous cart, empty
        items_lost += max(0, acked[u.name] - cart.get(PIZZA, 0))
    return {
        "acknowledged_adds": sum(acked.values()),
        "items_lost": items_lost,
        "sessions_lost": len(sessions_lost),
    }


async def play_rolling_deploy(ctx: Context) -> Played:
    users = [ctx.shopper(f"roll-{i}-{uuid.uuid4().hex[:4]}") for i in range(ctx.scale(4, 8))]
    try:
        for u in users:
            await u.register_and_login()
        ctx.log.outcomes.clear()  # count the deploy, not the logins
        stop = asyncio.Event()
        load = asyncio.create_task(steady_shoppers(users, stop))
        started = time.monotonic()
        await asyncio.sleep(1)
        await ctx.deployment.rolling_restart()
        await asyncio.sleep(1)
        stop.set()
        seen = await load
        metrics = RollingMetrics(
            acknowledged_adds=seen["acknowledged_adds"],
            items_lost=seen["items_lost"],
            sessions_lost=seen["sessions_lost"],
            requests=len(ctx.log.outcomes),
            failed_requests=ctx.log.failed(),
            statuses=ctx.log.statuses(),
            duration_s=round(time.monotonic() - started, 1),
        )
        invariants = {}
        if not ctx.local("session"):
            invariants["no session lost"] = seen["sessions_lost"] == 0
        if not ctx.local("session") and not ctx.local("cart"):
            invariants["no acknowledged item lost"] = seen["items_lost"] == 0
        return Played(invariants, dict(metrics), await ctx.timeline())
    finally:
        await closing(*users)


def stateful_and_stateless(quick: bool) -> list[Variant]:
    return [Variant("stateful", "stateful"), Variant("stateless")]


SCENARIOS = (
    Scenario("pizza", ("C2", "C1", "C14"),
             "Alice's order across a kill -9 of the replica that served her",
             profiles, play_pizza,
             lambda m: f"session {'kept' if m['session_survived'] else 'lost'}, "
                       f"{m['items_lost']}/{m['items_acked']} items lost"),
    Scenario("rolling-deploy", ("C4", "C2"),
             "every replica drained, stopped and started again in turn, under load",
             stateful_and_stateless, play_rolling_deploy,
             lambda m: f"{m['sessions_lost']} sessions, {m['items_lost']} items lost, "
                       f"{m['failed_requests']}/{m['requests']} requests failed"),
)  # fmt: skip
