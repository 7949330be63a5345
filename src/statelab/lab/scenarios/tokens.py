"""C10: signed tokens need no lookup to authenticate — and so cannot be revoked early.

A user logs in and makes requests through every replica; the store calls the
replicas counted during them give the lookups per authenticated request.
Then the user logs out everywhere, and for a few seconds the old credential is
tried on every replica directly: how many requests still get through. Only the
session placement differs between the variants (opaque id in Redis, a JWT with a
Redis deny-list, a pure JWT checked by signature and expiry alone).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TypedDict

import httpx

from statelab.lab.deployment import replica_urls
from statelab.lab.framework import (
    Context,
    Knob,
    Played,
    Scenario,
    Variant,
    closing,
    store_calls,
)


class RevocationMetrics(TypedDict):
    lookups_per_request: float
    requests_measured: int
    logout_all_status: int
    accepted_after_logout_all: int
    refused_after_logout_all: int
    window_s: float
    token_lifetime_s: float | None
    accepted_by: dict[str, int]


async def _lookups(ctx: Context) -> float:
    """Store calls the replicas' request paths made so far (chat and jobs, which
    keep their own connections and timers, are not counted)."""
    return sum((await store_calls(ctx.deployment)).values())


async def play_revocation(ctx: Context) -> Played:
    user = ctx.shopper(f"revoke-{uuid.uuid4().hex[:6]}")
    urls = await replica_urls(ctx.deployment)
    window = float(ctx.knob("window_s", ctx.scale(3, 6)))
    try:
        assert await user.register_and_login(), "could not log in"
        r = await user.request("GET", "/api/auth/me")
        assert r is not None and r.status_code == 200, "the new session is not accepted"
        lifetime = r.json()["expires_at"] - r.json()["created_at"]
        cookies, auth = dict(user.client.cookies), dict(user.auth)
        clients = [
            httpx.AsyncClient(base_url=url, cookies=cookies, headers=auth, timeout=5)
            for url in urls.values()
        ]
        try:
            for c in clients:  # every replica has seen the credential once
                await c.get("/api/auth/me")
            before, count = await _lookups(ctx), ctx.scale(300, 600)
            began = time.monotonic()
            for i in range(count):
                await clients[i % len(clients)].get("/api/auth/me")
            took, during = time.monotonic() - began, await _lookups(ctx) - before
            # The control: as long with no request at all. Health checks and timers
            # talk to the stores too; only what the requests added is theirs.
            idle = await _lookups(ctx)
            await asyncio.sleep(took)
            lookups = max(0.0, during - (await _lookups(ctx) - idle)) / count
            out = await user.request("POST", "/api/auth/logout-all")
            accepted: dict[str, int] = {rid: 0 for rid in urls}
            refused = 0
            ends = time.monotonic() + window
            while time.monotonic() < ends:
                answers = await asyncio.gather(*(c.get("/api/auth/me") for c in clients))
                for rid, answer in zip(urls, answers, strict=True):
                    if answer.status_code == 200:
                        accepted[rid] += 1
                    else:
                        refused += 1
                await asyncio.sleep(0.05)
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
    finally:
        await closing(user)
    metrics = RevocationMetrics(
        # Health checks between the two intervals differ by a call or two: tenths.
        lookups_per_request=round(lookups, 1),
        requests_measured=count,
        logout_all_status=out.status_code if out is not None else 0,
        accepted_after_logout_all=sum(accepted.values()),
        refused_after_logout_all=refused,
        window_s=window,
        token_lifetime_s=round(lifetime, 1),
        accepted_by=accepted,
    )
    invariants = {"logout-all answered": metrics["logout_all_status"] == 200}
    if ctx.placements.get("session") in ("redis", "jwt", "db"):
        invariants["the old credential is refused on every replica"] = (
            metrics["accepted_after_logout_all"] == 0
        )
    if ctx.placements.get("session") == "jwt-pure":
        # Health checks in the two intervals differ by a call or two, i.e. thousandths
        # per request; the deny-list would be a whole call on every request.
        invariants["no store lookup per request"] = lookups < 0.05
    return Played(invariants, dict(metrics), await ctx.timeline())


def session_placements(quick: bool) -> list[Variant]:
    return [
        Variant("redis", "token", place={"session": "redis"}),
        Variant("jwt", "token", place={"session": "jwt"}),
        Variant("jwt-pure", "token", place={"session": "jwt-pure"}),
    ]


SCENARIOS = (
    Scenario("revocation", ("C10",),
             "logout-all, then the old credential tried on every replica",
             session_placements, play_revocation,
             lambda m: f"{m['lookups_per_request']} lookups/request, old credential accepted "
                       f"{m['accepted_after_logout_all']} times after logout-all",
             knobs={"window_s": Knob("seconds to keep trying the old credential", float)}),
)  # fmt: skip
