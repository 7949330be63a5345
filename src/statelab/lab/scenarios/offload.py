"""Work that outlives a request: uploaded files, background jobs, periodic timers.

- ``uploads`` (C11): a photo uploaded through one replica, read through the others,
  then its uploader is killed. Sessions are shared in both variants, so only the
  file placement differs.
- ``jobs`` (C12): paid orders whose receipt jobs are mid-flight when the replica
  that took them (and a worker) are killed. Orders are in SQL in both variants.
- ``timers`` (C16): a periodic sales summary with N replicas, counted per period,
  before and after a replica (and a worker) is killed.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections import Counter
from typing import Any, TypedDict

from statelab.lab.deployment import replica_urls
from statelab.lab.framework import PIZZA, Context, Played, Scenario, Variant, closing
from statelab.lab.shopper import Shopper


def png() -> bytes:
    """A small valid PNG, made here so the lab ships no binary files."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 80, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


class UploadMetrics(TypedDict):
    uploaded_via: str
    readable_via_other_replicas: int
    other_replicas: int
    readable_after_uploader_killed: int
    reads_after_kill: int


async def _readable(client: Shopper, file_id: str) -> bool:
    r = await client.request("GET", f"/api/files/{file_id}")
    return r is not None and r.status_code == 200


async def play_uploads(ctx: Context) -> Played:
    urls = await replica_urls(ctx.deployment)
    name = f"photo-{uuid.uuid4().hex[:6]}"
    clients = {rid: ctx.shopper(name, url) for rid, url in sorted(urls.items())}
    via_lb = ctx.shopper(name)
    try:
        for c in [*clients.values(), via_lb]:
            await c.register_and_login()
        first_id, uploader = next(iter(clients.items()))
        files = {"file": ("pizza.png", png(), "image/png")}
        r = await uploader.request("POST", "/api/files", files=files)
        assert r is not None and r.status_code == 201, f"upload failed: {r and r.text}"
        file_id = r.json()["id"]
        readable = {
            rid: await _readable(c, file_id) for rid, c in clients.items() if rid != first_id
        }
        await ctx.deployment.kill(first_id)
        await asyncio.sleep(0.5)
        after_kill = [await _readable(via_lb, file_id) for _ in range(len(clients))]
        metrics = UploadMetrics(
            uploaded_via=first_id,
            readable_via_other_replicas=sum(readable.values()),
            other_replicas=len(readable),
            readable_after_uploader_killed=sum(after_kill),
            reads_after_kill=len(after_kill),
        )
        invariants = {}
        if not ctx.local("files"):
            invariants = {
                "readable through every replica": all(readable.values()),
                "readable after the uploader died": all(after_kill),
            }
        return Played(invariants, dict(metrics), await ctx.timeline())
    finally:
        await closing(*clients.values(), via_lb)


class JobMetrics(TypedDict):
    orders: int
    receipted: int
    lost_jobs: int
    receipts_stable: bool


async def _receipts(buyer: Shopper, orders: list[int], within: float) -> dict[int, str | None]:
    deadline = time.monotonic() + within
    while True:
        found: dict[int, str | None] = {}
        for order in orders:
            r = await buyer.request("GET", f"/api/orders/{order}")
            if r is None or r.status_code == 401:
                await buyer.login()
                r = await buyer.request("GET", f"/api/orders/{order}")
            found[order] = (
                r.json().get("receipt") if r is not None and r.status_code == 200 else None
            )
        if all(found.values()) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(1)


async def _kill_a_worker(ctx: Context) -> str | None:
    workers = (await ctx.deployment.status()).get("workers") or []
    if not workers:
        return None
    victim = str(workers[0]["name"])
    await ctx.deployment.kill(victim)
    await asyncio.sleep(1)
    await ctx.deployment.start(victim)
    return victim


async def play_jobs(ctx: Context) -> Played:
    buyer = ctx.shopper(f"jobs-{uuid.uuid4().hex[:6]}")
    orders: list[int] = []
    try:
        await buyer.register_and_login()
        await buyer.money("/api/account/top-up", amount_cents=100_000)
        for _ in range(ctx.scale(6, 12)):
            await buyer.add(PIZZA)
            r = await buyer.checkout()
            if r is not None and r.status_code == 201:
                orders.append(int(r.json()["id"]))
        await ctx.deployment.kill(buyer.last_served_by)
        await _kill_a_worker(ctx)
        # A queued job is redelivered once its heartbeat is silent (seconds); a job
        # that died with its replica never comes back, so waiting long proves nothing.
        patience = 8 if ctx.local("jobs") else ctx.scale(20, 30)
        receipts = await _receipts(buyer, orders, within=patience)
        again = await _receipts(buyer, orders, within=0)
    finally:
        await closing(buyer)
    done = sum(1 for r in receipts.values() if r)
    metrics = JobMetrics(
        orders=len(orders), receipted=done, lost_jobs=len(orders) - done,
        receipts_stable=receipts == again,
    )  # fmt: skip
    invariants = {}
    if not ctx.local("jobs"):
        invariants = {
            "every order got its receipt": done == len(orders) > 0,
            "each receipt made once": receipts == again,
        }
    return Played(invariants, dict(metrics), await ctx.timeline())


class TimerMetrics(TypedDict):
    replicas: int
    period_s: float
    runs_before_kill: list[int]
    runs_after_kill: list[int]
    ran_by: dict[str, int]
    killed: list[str]


PERIOD_ENV = "STATELAB_TIMER_PERIOD_SECONDS"


async def _summaries(admin: Shopper) -> list[dict[str, Any]]:
    r = await admin.request("GET", "/api/admin/reports")
    if r is None or r.status_code == 401:
        await admin.login()
        r = await admin.request("GET", "/api/admin/reports")
    assert r is not None and r.status_code == 200, f"reports: {r and r.text}"
    return list(r.json()["reports"])


def _per_period(rows: list[dict[str, Any]], first: int, last: int) -> list[int]:
    """Summary rows for each whole period from ``first`` to ``last`` (inclusive)."""
    counts = Counter(int(row["period"]) for row in rows)
    return [counts.get(p, 0) for p in range(first, last + 1)]


async def play_timers(ctx: Context) -> Played:
    period = float(ctx.variant.env.get(PERIOD_ENV, "2"))
    periods = ctx.scale(2, 5)
    admin = ctx.shopper(f"admin-{uuid.uuid4().hex[:6]}")
    try:
        await admin.register_and_login()
        await ctx.deployment.grant_admin(admin.name)
        replicas = len(await replica_urls(ctx.deployment))
        start = int(time.time() // period) + 1
        await asyncio.sleep(period * (periods + 1.5))
        split = int(time.time() // period)
        victim = sorted(await replica_urls(ctx.deployment))[0]
        await ctx.deployment.kill(victim)
        killed = [victim]
        if (worker := await _kill_a_worker(ctx)) is not None:
            killed.append(worker)
        after_start = int(time.time() // period) + 1
        await asyncio.sleep(period * (periods + 1.5))
        end = int(time.time() // period) - 1
        rows = await _summaries(admin)
    finally:
        await closing(admin)
    metrics = TimerMetrics(
        replicas=replicas,
        period_s=period,
        runs_before_kill=_per_period(rows, start, split - 1),
        runs_after_kill=_per_period(rows, after_start, end),
        ran_by=dict(Counter(str(row["ran_by"]) for row in rows)),
        killed=killed,
    )
    invariants = {}
    if not ctx.local("timers"):
        invariants = {
            "one run per period": all(
                n == 1 for n in metrics["runs_before_kill"] + metrics["runs_after_kill"]
            )
        }
    return Played(invariants, dict(metrics), await ctx.timeline())


def placements(quick: bool) -> list[Variant]:
    return [Variant("stateful", "stateful"), Variant("stateless")]


def timer_placements(quick: bool) -> list[Variant]:
    env = {PERIOD_ENV: "2"}
    return [
        Variant("inprocess", place={"timers": "inprocess"}, env=env),
        Variant("scheduler", place={"timers": "scheduler"}, env=env),
    ]


SCENARIOS = (
    # Only the placement under test differs: sessions (uploads) and orders (jobs) are
    # shared in both runs, so what is lost is the file or the job itself.
    Scenario("uploads", ("C11",), "a photo read through other replicas and after a kill",
             lambda quick: [Variant("stateful", "stateful", place={"session": "redis"}),
                            Variant("stateless")],
             play_uploads,
             lambda m: f"read on {m['readable_via_other_replicas']}/{m['other_replicas']} other "
                       f"replicas, {m['readable_after_uploader_killed']}/{m['reads_after_kill']} "
                       "after a kill"),
    Scenario("jobs", ("C12",), "receipt jobs in flight when a replica and a worker die",
             lambda quick: [Variant("stateful", "stateful", place={"ledger": "db"},
                                    env={"STATELAB_JOB_HOLD_SECONDS": "3"}),
                            Variant("stateless", env={"STATELAB_JOB_HOLD_SECONDS": "3"})],
             play_jobs, lambda m: f"{m['lost_jobs']}/{m['orders']} receipts lost"),
    Scenario("timers", ("C16",), "a periodic summary counted per period, across a kill",
             timer_placements, play_timers,
             lambda m: f"runs per period {m['runs_before_kill']}, after a kill "
                       f"{m['runs_after_kill']}"),
)  # fmt: skip
