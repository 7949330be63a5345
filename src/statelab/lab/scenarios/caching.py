"""C15: a cache inside each replica serves stale prices once another replica changes
them; a shared cache, invalidated on write, does not.

An admin changes a pizza's price through one replica. Shoppers on every replica
keep reading the menu and their carts; every answer with the old price after the
change was acknowledged is stale. Then shoppers who were shown the old total check
out: the shop must refuse ("price changed", with the new total) or charge what they
were shown — never silently charge a price they did not see.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TypedDict

from statelab.lab.deployment import replica_urls
from statelab.lab.framework import PIZZA, Context, Played, Scenario, Variant, closing
from statelab.lab.shopper import Shopper

TTL_ENV = "STATELAB_CACHE_TTL_SECONDS"


class StaleCacheMetrics(TypedDict):
    ttl_s: float
    old_price_cents: int
    new_price_cents: int
    reads: int
    stale_answers: int
    stale_seconds: float
    stale_by_replica: dict[str, int]
    checkouts: int
    price_changed_refusals: int
    silent_price_changes: int
    checkout_rule: str


async def _price(shopper: Shopper) -> int | None:
    r = await shopper.request("GET", "/api/menu")
    if r is None or r.status_code != 200:
        return None
    return next(int(i["price_cents"]) for i in r.json()["items"] if i["id"] == PIZZA)


async def _checkout(buyer: Shopper) -> tuple[int, int | None, int | None]:
    """(status, total shown before, total charged) for one checkout of the cart."""
    cart = await buyer.request("GET", "/api/cart")
    shown = (
        int(cart.json()["total_cents"]) if cart is not None and cart.status_code == 200 else None
    )
    r = await buyer.money("/api/checkout", expected_total_cents=shown or 0)
    if r is None:
        return 0, shown, None
    charged = int(r.json()["total_cents"]) if r.status_code == 201 else None
    return r.status_code, shown, charged


async def play_stale_cache(ctx: Context) -> Played:
    ttl = float(ctx.variant.env.get(TTL_ENV, "3"))
    urls = await replica_urls(ctx.deployment)
    name = f"cache-{uuid.uuid4().hex[:6]}"
    readers = {rid: ctx.shopper(name, url) for rid, url in sorted(urls.items())}
    buyers = [ctx.shopper(f"buy-{i}-{uuid.uuid4().hex[:4]}", url)
              for i, url in enumerate(sorted(urls.values()))]  # fmt: skip
    admin = ctx.shopper(f"admin-{uuid.uuid4().hex[:6]}", next(iter(sorted(urls.values()))))
    try:
        for s in [*readers.values(), *buyers, admin]:
            await s.register_and_login()
        await ctx.deployment.grant_admin(admin.name)
        await admin.login()  # the role is read at login
        for b in buyers:
            await b.money("/api/account/top-up", amount_cents=100_000)
            await b.add(PIZZA)
        for reader in readers.values():  # every replica has the old price cached
            await _price(reader)
        old = await _price(admin)
        assert old is not None, "no menu"
        new = old + 100
        r = await admin.request("PUT", f"/api/admin/menu/{PIZZA}", json={"price_cents": new})
        assert r is not None and r.status_code == 200, f"price change refused: {r and r.text}"
        changed = time.time()
        for b in buyers:  # each buyer sees the cart (maybe stale) on its own replica
            await b.request("GET", "/api/cart")
        outcomes = [await _checkout(b) for b in buyers]
        stale: dict[str, int] = {rid: 0 for rid in readers}
        last_stale, reads = 0.0, 0
        while time.time() - changed < ttl + 1.5:
            for rid, reader in readers.items():
                price = await _price(reader)
                reads += 1
                if price == old:
                    stale[rid] += 1
                    last_stale = time.time() - changed
            await asyncio.sleep(0.1)
    finally:
        await closing(*readers.values(), *buyers, admin)
    refusals = sum(1 for status, _, _ in outcomes if status == 409)
    silent = sum(1 for status, shown, charged in outcomes if status == 201 and charged != shown)
    metrics = StaleCacheMetrics(
        ttl_s=ttl,
        old_price_cents=old,
        new_price_cents=new,
        reads=reads,
        stale_answers=sum(stale.values()),
        stale_seconds=round(last_stale, 2),
        stale_by_replica=stale,
        checkouts=len(outcomes),
        price_changed_refusals=refusals,
        silent_price_changes=silent,
        checkout_rule=_rule(outcomes),
    )
    invariants = {"no checkout charged a price it did not show": silent == 0}
    if not ctx.local("cache"):
        invariants["no stale answer from the shared cache"] = metrics["stale_answers"] == 0
    return Played(invariants, dict(metrics), await ctx.timeline())


def _rule(outcomes: list[tuple[int, int | None, int | None]]) -> str:
    refused = sum(1 for s, _, _ in outcomes if s == 409)
    paid = sum(1 for s, _, _ in outcomes if s == 201)
    return (
        f"refused {refused} checkouts whose shown total was out of date ('price changed', "
        f"with the new total) and charged {paid} at the total they showed"
    )


def cache_placements(quick: bool) -> list[Variant]:
    env = {TTL_ENV: "3"}
    return [
        Variant("memory", place={"cache": "memory"}, env=env),
        Variant("redis", place={"cache": "redis"}, env=env),
    ]


SCENARIOS = (
    Scenario("stale-cache", ("C15",), "a price changed through one replica, read through all",
             cache_placements, play_stale_cache,
             lambda m: f"{m['stale_answers']}/{m['reads']} stale answers, for "
                       f"{m['stale_seconds']} s"),
)  # fmt: skip
