"""The lab's scenarios: each plays a journey against a running deployment as
clients would, breaks something through the control API, and measures.

A scenario runs once per profile, in a deployment of its own. ``invariants`` are
what must hold in that profile (a failed invariant fails the demo); losses the
stateful profile is expected to show are ``metrics`` — findings, not failures.
Each scenario's ``judge`` compares the profiles and gives the claim's verdict.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from statelab.lab.chatter import Chatter
from statelab.lab.deployment import Deployment
from statelab.lab.shopper import Log, Shopper

CLAIMS = {
    "C1": "With stateless replicas any instance can serve any request, and a load "
    "balancer can spread traffic evenly.",
    "C2": "When a replica that holds sessions in memory crashes, those users lose their "
    "session and cart; with a shared store nothing is lost.",
    "C3": "Sticky sessions make load uneven: heavy users pin one server while others idle.",
    "C4": "Sticky/stateful services have no graceful failover and make rolling deploys risky.",
    "C5": "In-process sessions put a hard cap on scale: RAM fills up.",
    "C6": 'Local state is faster; a shared store adds "slightly more latency".',
    "C7": "With a shared store, adding a server needs no migration: it serves at once. "
    "With sticky sessions a new server only gets new users.",
    "C8": "Per-server state gives different answers on different servers (the ATM); a "
    "central database gives one answer.",
    "C9": "A chat can scale out when presence, unread counts and routing live in shared "
    "stores and a queue; users reconnect to any server.",
    "C10": "Signed tokens (JWT) need no store lookup to authenticate — but revoking them "
    "needs shared state again.",
    "C11": "Uploaded files belong in object storage, not on a server's disk.",
    "C12": "Background jobs belong in a queue worker, not inside the web process.",
    "C13": "A shared database centralises data and can reduce latency compared with "
    "synchronising separate stores.",
    "C14": "A stateless replica can crash without losing data; state stores must then "
    "protect the data (persistence, replication).",
}

PIZZA, DRINK, DESSERT = 1, 10, 20


@dataclass
class Context:
    deployment: Deployment
    profile: str
    quick: bool
    log: Log = field(default_factory=Log)
    sessions: int | None = None  # the memory scenario's largest size, when asked

    @property
    def url(self) -> str:
        return self.deployment.shop_url

    def shopper(self, name: str, url: str | None = None) -> Shopper:
        return Shopper(url or self.url, name, self.log)

    def scale(self, quick: int, full: int) -> int:
        return quick if self.quick else full


@dataclass
class Result:
    """One scenario in one profile."""

    name: str
    profile: str
    invariants: dict[str, bool] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    timeline: dict[str, Any] | None = None
    claims: tuple[str, ...] = ()
    verdict: str = ""
    reason: str = ""

    @property
    def held(self) -> bool:
        return all(self.invariants.values())


Verdict = tuple[str, str]  # ("confirmed" | "refuted" | "partly true", reason with numbers)


@dataclass(frozen=True)
class Scenario:
    name: str
    claims: tuple[str, ...]
    profiles: tuple[str, ...]
    play: Callable[[Context], Awaitable[Result]]
    judge: Callable[[dict[str, Result]], Verdict]
    replicas: int = 3
    place: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


async def _closing(*shoppers: Shopper) -> None:
    await asyncio.gather(*(s.close() for s in shoppers))


async def _timeline(ctx: Context, since: float) -> dict[str, Any]:
    events = await ctx.deployment.events(since)
    return {
        "t0": since,
        "requests": ctx.log.as_json(),
        "events": [
            {"t": e.get("ts", 0), "event": e.get("event", ""), "target": e.get("target", "")}
            for e in events
        ],
    }


async def _retrying(call: Callable[[], Awaitable[bool]], within: float) -> bool:
    """Try ``call`` until it succeeds or ``within`` seconds pass (a patient user)."""
    deadline = time.monotonic() + within
    while True:
        if await call():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)


# ------------------------------------------------------------------------- pizza


async def play_pizza(ctx: Context) -> Result:
    """Alice logs in, adds a pizza and a drink; her replica is killed; she adds a
    dessert and checks out."""
    since = time.time()
    alice = ctx.shopper(f"alice-{uuid.uuid4().hex[:6]}")
    try:
        assert await alice.register_and_login(), "Alice could not log in"
        acked = [item for item in (PIZZA, DRINK) if await alice.add(item)]
        home = alice.last_served_by
        killed_at = time.monotonic()
        await ctx.deployment.kill(home)
        survived = await alice.logged_in()
        if not survived:  # what a real user does: log in again (accounts are in SQL)
            await _retrying(alice.login, 15)
        first_ok = time.monotonic() - killed_at
        await _retrying(lambda: alice.add(DESSERT), 15)
        cart = await alice.cart() or {}
        lost = [item for item in acked if item not in cart]
        await alice.money("/api/account/top-up", amount_cents=5000)
        paid = await alice.money("/api/checkout")
        checkout = paid.status_code if paid is not None else 0
        revoked = await _revocation_holds(ctx, alice)
        result = Result("pizza", ctx.profile)
        result.metrics = {
            "replica_killed": home,
            "served_after_kill": alice.last_served_by,
            "session_survived": survived,
            "items_acked": len(acked),
            "items_lost": len(lost),
            "checkout_status": checkout,
            "order_total_cents": paid.json()["total_cents"] if paid and checkout == 201 else None,
            "seconds_to_first_success": round(first_ok, 2),
            "logout_all_refused_everywhere": revoked,
        }
        result.invariants = {"checkout succeeds after the crash": checkout == 201}
        if ctx.profile != "stateful":
            result.invariants["session survived the crash"] = survived
            result.invariants["no acknowledged cart item lost"] = not lost
            result.invariants["logout-all refused on every replica"] = revoked
        result.timeline = await _timeline(ctx, since)
        return result
    finally:
        await _closing(alice)


async def _revocation_holds(ctx: Context, user: Shopper) -> bool:
    """After logout-all, the user's old credential is refused by every replica."""
    old_cookies, old_auth = dict(user.client.cookies), dict(user.auth)
    r = await user.request("POST", "/api/auth/logout-all")
    if r is None or r.status_code != 200:
        return False
    for url in (await ctx.deployment.replica_urls()).values():
        async with httpx.AsyncClient(base_url=url, cookies=old_cookies, timeout=5) as c:
            if (await c.get("/api/auth/me", headers=old_auth)).status_code != 401:
                return False
    return True


def judge_pizza(results: dict[str, Result]) -> Verdict:
    stateful = results.get("stateful")
    shared = [r for p, r in results.items() if p != "stateful"]
    kept = all(r.metrics["session_survived"] and r.metrics["items_lost"] == 0 for r in shared)
    if stateful is None:
        return ("confirmed" if kept else "refuted"), "no stateful run to compare"
    lost = not stateful.metrics["session_survived"] or stateful.metrics["items_lost"] > 0
    detail = (
        f"stateful: session {'kept' if stateful.metrics['session_survived'] else 'lost'}, "
        f"{stateful.metrics['items_lost']}/{stateful.metrics['items_acked']} items lost; "
        + "; ".join(
            f"{r.profile}: session {'kept' if r.metrics['session_survived'] else 'lost'}, "
            f"{r.metrics['items_lost']} items lost"
            for r in shared
        )
    )
    if lost and kept:
        return "confirmed", detail
    if not lost and kept:
        return "refuted", detail
    return "partly true", detail


# --------------------------------------------------------------------------- atm


async def play_atm(ctx: Context) -> Result:
    """Withdraw through one replica and read the balance through the others; then a
    bank workload through the load balancer while replicas are killed."""
    since = time.time()
    result = Result("atm", ctx.profile)
    answers = await _atm_answers(ctx)
    bank = await _bank_workload(ctx)
    result.metrics = {"balances_seen": answers, "distinct_answers": len(set(answers.values()))}
    result.metrics.update(bank)
    if ctx.profile != "stateful":
        result.invariants = {
            "one answer on every replica": len(set(answers.values())) == 1,
            "money conserved (no violations)": bank["violations"] == 0,
            "no balance below zero": bank["negative_balances"] == 0,
            "one charge per Idempotency-Key": bank["double_charges"] == 0,
        }
    else:
        result.invariants = {"no balance below zero": bank["negative_balances"] == 0}
    result.timeline = await _timeline(ctx, since)
    return result


async def _atm_answers(ctx: Context) -> dict[str, int | None]:
    urls = await ctx.deployment.replica_urls()
    name = f"atm-{uuid.uuid4().hex[:6]}"
    tellers = {rid: ctx.shopper(name, url) for rid, url in sorted(urls.items())}
    try:
        for teller in tellers.values():
            await teller.register_and_login()
        first = next(iter(tellers.values()))
        await first.money("/api/account/top-up", amount_cents=10_000)
        await first.money("/api/account/withdraw", amount_cents=3_000)
        return {rid: await t.balance() for rid, t in tellers.items()}
    finally:
        await _closing(*tellers.values())


async def _bank_workload(ctx: Context) -> dict[str, Any]:
    users = [ctx.shopper(f"bank-{i}-{uuid.uuid4().hex[:4]}") for i in range(ctx.scale(4, 8))]
    ops = ctx.scale(25, 80)
    acked: dict[str, list[tuple[str, int, str, dict[str, Any]]]] = {u.name: [] for u in users}
    retries = 0
    try:
        for u in users:
            await u.register_and_login()
        rng = random.Random(7)

        async def customer(u: Shopper) -> None:
            nonlocal retries
            for _ in range(ops):
                path = rng.choice(("/api/account/top-up", "/api/account/withdraw"))
                amount = rng.randint(50, 500)
                key = uuid.uuid4().hex
                for attempt in range(8):
                    r = await u.money(path, key, amount_cents=amount)
                    if r is not None and r.status_code in (200, 409) and _final(r):
                        if r.status_code == 200:
                            acked[u.name].append((path, amount, key, r.json()))
                        break
                    if r is not None and r.status_code == 401:
                        await u.login()  # stateful: the session died with its replica
                    retries += attempt == 0
                    await asyncio.sleep(0.2)

        chaos = asyncio.create_task(_kill_and_restart(ctx, times=2, pause=1.5))
        await asyncio.gather(*(customer(u) for u in users))
        await chaos
        return await _audit(users, acked, retries)
    finally:
        await _closing(*users)


def _final(r: httpx.Response) -> bool:
    """A 409 that says "in flight" is not an answer yet; an insufficient-funds one is."""
    return r.status_code == 200 or "in flight" not in r.text


async def _kill_and_restart(ctx: Context, times: int, pause: float) -> None:
    for _ in range(times):
        await asyncio.sleep(pause)
        urls = await ctx.deployment.replica_urls()
        victim = random.choice(sorted(urls))
        await ctx.deployment.kill(victim)
        await asyncio.sleep(pause)
        await ctx.deployment.start(victim)


async def _audit(
    users: list[Shopper], acked: dict[str, list[tuple[str, int, str, dict[str, Any]]]], retries: int
) -> dict[str, Any]:
    violations = negative = double = 0
    topped = paid = held = 0
    for u in users:
        expected = 0
        for path, amount, _, _ in acked[u.name]:
            expected += amount if path.endswith("top-up") else -amount
            topped += amount if path.endswith("top-up") else 0
            paid += amount if path.endswith("withdraw") else 0
        balance = await u.balance()
        if balance is None:
            await u.login()
            balance = await u.balance()
        held += balance or 0
        violations += balance != expected
        negative += (balance or 0) < 0
        for path, amount, key, body in acked[u.name][-3:]:  # replays must not charge again
            r = await u.money(path, key, amount_cents=amount)
            if r is None or r.status_code != 200 or r.json() != body:
                double += 1
        if await u.balance() != balance:
            double += 1
    return {
        "acknowledged_operations": sum(len(v) for v in acked.values()),
        "retries": retries,
        "total_topped_up_cents": topped,
        "total_withdrawn_cents": paid,
        "sum_of_balances_cents": held,
        "violations": violations,
        "negative_balances": negative,
        "double_charges": double,
    }


def judge_atm(results: dict[str, Result]) -> Verdict:
    mem, db = results.get("stateful"), results.get("stateless")
    if mem is None or db is None:
        return "partly true", "needs both the stateful and the stateless run"
    detail = (
        f"stateful: {mem.metrics['distinct_answers']} different balances for one account, "
        f"{mem.metrics['violations']} conservation violations; db: "
        f"{db.metrics['distinct_answers']} answer, {db.metrics['violations']} violations"
    )
    if mem.metrics["distinct_answers"] > 1 and db.metrics["distinct_answers"] == 1:
        return "confirmed", detail
    return "refuted", detail


# ------------------------------------------------------------------- sticky-skew


async def play_sticky_skew(ctx: Context) -> Result:
    """A Zipf-like population: a few heavy users, many light ones."""
    users = [ctx.shopper(f"zipf-{i}-{uuid.uuid4().hex[:4]}") for i in range(ctx.scale(18, 40))]
    weights = [1 / (rank + 1) ** 1.2 for rank in range(len(users))]
    total = ctx.scale(600, 2400)
    try:
        for u in users:
            await u.register_and_login()
        ctx.log.outcomes.clear()  # count only the workload, not the logins
        rng = random.Random(11)
        picks = rng.choices(range(len(users)), weights=weights, k=total)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for p in picks:
            queue.put_nowait(p)

        async def worker() -> None:
            while not queue.empty():
                await users[queue.get_nowait()].cart()

        await asyncio.gather(*(worker() for _ in range(8)))
        per_replica = ctx.log.served_by()
        counts = list(per_replica.values()) or [0]
        mean = sum(counts) / max(1, ctx.deployment.replicas)
        result = Result("sticky-skew", ctx.profile)
        result.metrics = {
            "requests": total,
            "per_replica": dict(sorted(per_replica.items())),
            "max_over_mean": round(max(counts) / mean, 2) if mean else 0.0,
            "busiest_share": round(max(counts) / max(1, sum(counts)), 3),
            "heaviest_user_share": round(weights[0] / sum(weights), 3),
        }
        result.invariants = {"every request answered": ctx.log.failed() == 0}
        return result
    finally:
        await _closing(*users)


def judge_sticky_skew(results: dict[str, Result]) -> Verdict:
    sticky, rr = results.get("stateful"), results.get("stateless")
    if sticky is None or rr is None:
        return "partly true", "needs both the sticky and the round-robin run"
    s, r = sticky.metrics["max_over_mean"], rr.metrics["max_over_mean"]
    detail = f"busiest replica / mean: sticky {s}, round-robin {r}"
    if s > 1.2 and r <= 1.1:
        return "confirmed", detail
    if s <= 1.1:
        return "refuted", detail
    return "partly true", detail


# ---------------------------------------------------------------- rolling-deploy


async def _steady_shoppers(
    ctx: Context, users: list[Shopper], stop: asyncio.Event
) -> dict[str, Any]:
    """Users browse and add items until ``stop``; returns what they saw and lost."""
    acked: dict[str, int] = {u.name: 0 for u in users}
    sessions_lost: set[str] = set()

    async def browse(u: Shopper) -> None:
        while not stop.is_set():
            if not await u.logged_in() and u.last_status == 401:
                sessions_lost.add(u.name)  # the user notices and logs in again
                await u.login()
                continue
            if await u.add(PIZZA):
                acked[u.name] += 1
            await u.cart()
            await asyncio.sleep(0.05)

    await asyncio.gather(*(browse(u) for u in users))
    items_lost = 0
    for u in users:
        cart = await u.cart() or {}
        items_lost += max(0, acked[u.name] - cart.get(PIZZA, 0))
    return {
        "acknowledged_adds": sum(acked.values()),
        "items_lost": items_lost,
        "sessions_lost": len(sessions_lost),
    }


async def play_rolling_deploy(ctx: Context) -> Result:
    """Restart every replica in turn (drain, SIGTERM, start) under load."""
    since = time.time()
    users = [ctx.shopper(f"roll-{i}-{uuid.uuid4().hex[:4]}") for i in range(ctx.scale(4, 8))]
    try:
        for u in users:
            await u.register_and_login()
        stop = asyncio.Event()
        load = asyncio.create_task(_steady_shoppers(ctx, users, stop))
        started = time.monotonic()
        await asyncio.sleep(1)
        await ctx.deployment.rolling_restart()
        await asyncio.sleep(1)
        stop.set()
        seen = await load
        result = Result("rolling-deploy", ctx.profile)
        result.metrics = {
            **seen,
            "requests": len(ctx.log.outcomes),
            "failed_requests": ctx.log.failed(),
            "statuses": ctx.log.statuses(),
            "duration_s": round(time.monotonic() - started, 1),
        }
        if ctx.profile != "stateful":
            result.invariants = {
                "no session lost": seen["sessions_lost"] == 0,
                "no acknowledged item lost": seen["items_lost"] == 0,
            }
        result.timeline = await _timeline(ctx, since)
        return result
    finally:
        await _closing(*users)


def judge_rolling_deploy(results: dict[str, Result]) -> Verdict:
    sticky, shared = results.get("stateful"), results.get("stateless")
    if sticky is None or shared is None:
        return "partly true", "needs both runs"
    detail = (
        f"stateful: {sticky.metrics['sessions_lost']} sessions and "
        f"{sticky.metrics['items_lost']} items lost, {sticky.metrics['failed_requests']} failed "
        f"requests; stateless: {shared.metrics['sessions_lost']} sessions, "
        f"{shared.metrics['items_lost']} items, {shared.metrics['failed_requests']} failed"
    )
    risky = sticky.metrics["sessions_lost"] > 0 or sticky.metrics["items_lost"] > 0
    safe = shared.metrics["sessions_lost"] == 0 and shared.metrics["items_lost"] == 0
    if risky and safe:
        return "confirmed", detail
    return ("refuted" if not risky else "partly true"), detail


# --------------------------------------------------------------------- scale-out


async def play_scale_out(ctx: Context) -> Result:
    """Add a replica under load; who does it serve, and how soon?"""
    since = time.time()
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
        first = min((o.at for o in after if o.served_by == new_id), default=None)
        share = sum(o.served_by == new_id for o in after) / max(1, len(after))
        result = Result("scale-out", ctx.profile)
        result.metrics = {
            "new_replica": new_id,
            "seconds_to_start": round(ready - asked, 2),
            "seconds_to_first_request": round(first - ready, 2) if first else None,
            "share_after_add": round(share, 3),
            "fair_share": round(1 / (ctx.deployment.replicas + 1), 3),
            "per_replica_after_add": _count_by(after),
            "regulars_on_new_replica": await _on_replica(regulars, new_id),
            "newcomers_on_new_replica": await _on_replica(newcomers, new_id),
        }
        result.invariants = {"the new replica serves requests": first is not None}
        result.timeline = await _timeline(ctx, since)
        return result
    finally:
        await _closing(*regulars, *newcomers)


def _count_by(outcomes: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        if o.served_by:
            counts[o.served_by] = counts.get(o.served_by, 0) + 1
    return dict(sorted(counts.items()))


async def _on_replica(users: list[Shopper], rid: str) -> int:
    return sum(1 for u in users if u.last_served_by == rid)


def judge_scale_out(results: dict[str, Result]) -> Verdict:
    sticky, shared = results.get("stateful"), results.get("stateless")
    if sticky is None or shared is None:
        return "partly true", "needs both runs"
    s, f = shared.metrics, sticky.metrics
    detail = (
        f"stateless: first request after {s['seconds_to_first_request']} s, share "
        f"{s['share_after_add']} (fair {s['fair_share']}); sticky: share {f['share_after_add']}, "
        f"{f['regulars_on_new_replica']} existing users moved, "
        f"{f['newcomers_on_new_replica']} new users there"
    )
    fast = s["seconds_to_first_request"] is not None and s["share_after_add"] >= s["fair_share"] / 2
    only_new = f["regulars_on_new_replica"] == 0
    if fast and only_new:
        return "confirmed", detail
    return "partly true", detail


# ------------------------------------------------------------------------ memory


async def play_memory(ctx: Context) -> Result:
    """Sessions held in the replica vs in Redis: bytes per session, at a tenth of the
    size and at the size (10 000 by default; ``statelab scenario memory --sessions``)."""
    top = ctx.sessions or ctx.scale(3000, 10_000)
    sizes = (top // 10, top)
    status = await ctx.deployment.status()
    replica = status["replicas"][0]
    redis_url = (status.get("redis") or {}).get("url")
    rss_before = await _rss(replica["url"])
    redis_before = await _redis_used(redis_url)
    name = f"mem-{uuid.uuid4().hex[:6]}"
    points: list[dict[str, int]] = []
    made = 0
    async with httpx.AsyncClient(base_url=replica["url"], timeout=30) as client:
        creds = {"username": name, "password": "lab-password-123"}
        await client.post("/api/auth/register", json=creds)
        semaphore = asyncio.Semaphore(16)

        async def login() -> bool:
            async with semaphore:
                r = await client.post("/api/auth/login", json=creds, headers={"Cookie": ""})
                return r.status_code == 200

        failed = 0
        for size in sizes:
            while made + failed < size:  # in batches: 100 000 logins are not 100 000 tasks
                batch = min(2000, size - made - failed)
                ok = sum(await asyncio.gather(*(login() for _ in range(batch))))
                made, failed = made + ok, failed + batch - ok
            points.append(
                {
                    "sessions": made,
                    "replica_rss_growth_bytes": await _rss(replica["url"]) - rss_before,
                    "redis_growth_bytes": await _redis_used(redis_url) - redis_before,
                }
            )
    result = Result("memory", ctx.profile)
    final = points[-1]
    per_replica = final["replica_rss_growth_bytes"] / max(1, made)
    per_redis = final["redis_growth_bytes"] / max(1, made) if redis_url else 0.0
    held_in = "replica" if ctx.profile == "stateful" else "redis"
    per_session = per_replica if held_in == "replica" else per_redis
    result.metrics = {
        "sessions": made,
        "sessions_held_in": held_in,
        "points": points,
        "replica_rss_growth_bytes": final["replica_rss_growth_bytes"],
        "replica_bytes_per_session": round(per_replica),
        "redis_bytes_per_session": round(per_redis),
        "sessions_per_gib": int(2**30 / per_session) if per_session > 0 else None,
    }
    result.invariants = {"every login made a session": made == sizes[-1]}
    return result


async def _rss(url: str) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{url}/metrics")).text
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes"):
            return int(float(line.split()[-1]))
    return 0


async def _redis_used(url: str | None) -> int:
    if not url:
        return 0
    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("memory")
        return int(info["used_memory"])
    finally:
        await client.aclose()


def judge_memory(results: dict[str, Result]) -> Verdict:
    mem = results.get("stateful")
    if mem is None:
        return "partly true", "needs the stateful run"
    shared = results.get("stateless")
    # Logging in grows a replica's heap whatever the placement; the difference
    # between the two runs is what holding the sessions costs.
    baseline = shared.metrics["replica_bytes_per_session"] if shared else 0
    per = mem.metrics["replica_bytes_per_session"] - baseline
    cap = int(2**30 / per) if per > 0 else None
    redis_per = shared.metrics["redis_bytes_per_session"] if shared else None
    detail = (
        f"about {per} bytes per in-process session ({cap} sessions per GiB of replica RAM, "
        f"measured over {mem.metrics['sessions']} sessions); in Redis {redis_per} bytes each, "
        "outside the replica"
    )
    steps = [
        f"{p['replica_rss_growth_bytes'] // max(1, p['sessions'])} B/login at {p['sessions']}"
        for p in mem.metrics.get("points", [])
    ]
    if steps:
        detail += f" (stateful replica growth: {', '.join(steps)})"
    if per <= 0:
        return "refuted", detail
    return "partly true", detail + ": RAM is a cap, but far above typical sessions per replica"


# ----------------------------------------------------------------------- latency


async def play_latency(ctx: Context) -> Result:
    """The cart workload through the load balancer at a fixed moderate rate."""
    users = [ctx.shopper(f"lat-{i}-{uuid.uuid4().hex[:4]}") for i in range(16)]
    rate, seconds = 60, ctx.scale(5, 10)
    try:
        for u in users:
            await u.register_and_login()
        ctx.log.outcomes.clear()
        tasks = []
        for n in range(rate * seconds):
            u = users[n % len(users)]
            call = u.add(PIZZA) if n % 5 == 4 else u.cart()
            tasks.append(asyncio.create_task(_at(n / rate, call)))
        await asyncio.gather(*tasks)
        ms = sorted(o.ms for o in ctx.log.outcomes if o.ok)
        result = Result("latency", ctx.profile)
        result.metrics = {
            "rate_per_s": rate,
            "requests": len(ctx.log.outcomes),
            "p50_ms": _pct(ms, 50),
            "p90_ms": _pct(ms, 90),
            "p99_ms": _pct(ms, 99),
            "cdf_ms": [_pct(ms, p) for p in range(0, 101, 2)],
        }
        result.invariants = {"every request answered": ctx.log.failed() == 0}
        return result
    finally:
        await _closing(*users)


async def _at(delay: float, call: Awaitable[Any]) -> None:
    await asyncio.sleep(delay)
    await call


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    index = min(len(values) - 1, round(p / 100 * (len(values) - 1)))
    return round(values[index], 2)


def judge_latency(results: dict[str, Result]) -> Verdict:
    base = results.get("stateful")
    if base is None:
        return "partly true", "needs the stateful run"
    b = base.metrics["p50_ms"]
    parts = [f"p50 stateful {b} ms"] + [
        f"{p} {r.metrics['p50_ms']} ms (+{round(r.metrics['p50_ms'] - b, 2)} ms)"
        for p, r in results.items()
        if p != "stateful"
    ]
    extra = max((r.metrics["p50_ms"] - b for p, r in results.items() if p != "stateful"), default=0)
    detail = ", ".join(parts) + " at a moderate rate; see `statelab bench` for saturation"
    if extra <= 0:
        return "refuted", detail
    return ("confirmed" if extra < max(2.0, b) else "partly true"), detail


# ----------------------------------------------------------------- redis-restart


async def play_redis_restart(ctx: Context) -> Result:
    """kill -9 Redis under load (AOF on), let the supervisor restart it."""
    since = time.time()
    users = [ctx.shopper(f"aof-{i}-{uuid.uuid4().hex[:4]}") for i in range(4)]
    try:
        for u in users:
            await u.register_and_login()
        stop = asyncio.Event()
        load = asyncio.create_task(_steady_shoppers(ctx, users, stop))
        await asyncio.sleep(1.5)
        killed = time.time()
        await ctx.deployment.restart_redis("kill")
        recovered = await _recovered(ctx, killed, within=20)
        await asyncio.sleep(1)
        stop.set()
        seen = await load
        during = [o for o in ctx.log.outcomes if o.at >= killed]
        result = Result("redis-restart", ctx.profile)
        result.metrics = {
            **seen,
            "seconds_to_recover": recovered,
            "answers_503": sum(o.status == 503 for o in during),
            "answers_500": sum(o.status == 500 for o in during),
            "no_answer": sum(o.status == 0 for o in during),
        }
        result.invariants = {
            "no acknowledged write lost": seen["items_lost"] == 0,
            "clients saw 503, never 500": result.metrics["answers_500"] == 0,
            "service recovered": recovered is not None,
        }
        result.timeline = await _timeline(ctx, since)
        return result
    finally:
        await _closing(*users)


async def _recovered(ctx: Context, since: float, within: float) -> float | None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        after = [o for o in ctx.log.outcomes if o.at >= since]
        failures = [o.at for o in after if not o.ok and o.status != 401]
        last_failure = max(failures, default=since)
        if any(o.ok and o.at > last_failure + 0.5 for o in after):
            return round(last_failure - since, 2)
    return None


def judge_redis_restart(results: dict[str, Result]) -> Verdict:
    r = results.get("stateless")
    if r is None:
        return "partly true", "needs the stateless run"
    m = r.metrics
    detail = (
        f"{m['items_lost']} of {m['acknowledged_adds']} acknowledged writes lost, recovered in "
        f"{m['seconds_to_recover']} s, {m['answers_503']} answers 503 and {m['answers_500']} 500"
    )
    return ("confirmed" if r.held else "refuted"), detail


# ------------------------------------------------------------------ uploads, jobs


def _png() -> bytes:
    """A small valid PNG, made here so the lab ships no binary files."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 80, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


async def play_uploads(ctx: Context) -> Result:
    """Upload through one replica, read through the others, kill the uploader."""
    since = time.time()
    urls = await ctx.deployment.replica_urls()
    name = f"photo-{uuid.uuid4().hex[:6]}"
    clients = {rid: ctx.shopper(name, url) for rid, url in sorted(urls.items())}
    via_lb = ctx.shopper(name)
    try:
        for c in [*clients.values(), via_lb]:
            await c.register_and_login()
        first_id, uploader = next(iter(clients.items()))
        files = {"file": ("pizza.png", _png(), "image/png")}
        r = await uploader.request("POST", "/api/files", files=files)
        assert r is not None and r.status_code == 201, f"upload failed: {r and r.text}"
        file_id = r.json()["id"]
        readable = {
            rid: await _readable(c, file_id) for rid, c in clients.items() if rid != first_id
        }
        await ctx.deployment.kill(first_id)
        await asyncio.sleep(0.5)
        after_kill = [await _readable(via_lb, file_id) for _ in range(len(clients))]
        result = Result("uploads", ctx.profile)
        result.metrics = {
            "uploaded_via": first_id,
            "readable_via_other_replicas": sum(readable.values()),
            "other_replicas": len(readable),
            "readable_after_uploader_killed": sum(after_kill),
            "reads_after_kill": len(after_kill),
        }
        if ctx.profile != "stateful":
            result.invariants = {
                "readable through every replica": all(readable.values()),
                "readable after the uploader died": all(after_kill),
            }
        result.timeline = await _timeline(ctx, since)
        return result
    finally:
        await _closing(*clients.values(), via_lb)


async def _readable(client: Shopper, file_id: str) -> bool:
    r = await client.request("GET", f"/api/files/{file_id}")
    return r is not None and r.status_code == 200


def judge_uploads(results: dict[str, Result]) -> Verdict:
    disk, objects = results.get("stateful"), results.get("stateless")
    if disk is None or objects is None:
        return "partly true", "needs both runs"
    d, o = disk.metrics, objects.metrics
    detail = (
        f"disk: readable on {d['readable_via_other_replicas']}/{d['other_replicas']} other "
        f"replicas, {d['readable_after_uploader_killed']}/{d['reads_after_kill']} reads after the "
        f"uploader died; objects: {o['readable_via_other_replicas']}/{o['other_replicas']} and "
        f"{o['readable_after_uploader_killed']}/{o['reads_after_kill']}"
    )
    disk_fails = d["readable_via_other_replicas"] < d["other_replicas"]
    return ("confirmed" if disk_fails and objects.held else "refuted"), detail


async def play_jobs(ctx: Context) -> Result:
    """Orders whose receipt jobs are in flight when a replica (and a worker) die."""
    since = time.time()
    buyer = ctx.shopper(f"jobs-{uuid.uuid4().hex[:6]}")
    orders: list[int] = []
    try:
        await buyer.register_and_login()
        await buyer.money("/api/account/top-up", amount_cents=100_000)
        for _ in range(ctx.scale(6, 12)):
            await buyer.add(PIZZA)
            r = await buyer.money("/api/checkout")
            if r is not None and r.status_code == 201:
                orders.append(int(r.json()["id"]))
        await _kill_job_runners(ctx, buyer.last_served_by)
        receipts = await _receipts(buyer, orders, within=ctx.scale(20, 30))
        again = await _receipts(buyer, orders, within=0)
        result = Result("jobs", ctx.profile)
        done = sum(1 for r in receipts.values() if r)
        result.metrics = {
            "orders": len(orders),
            "receipted": done,
            "lost_jobs": len(orders) - done,
            "receipts_stable": receipts == again,
        }
        if ctx.profile != "stateful":
            result.invariants = {
                "every order got its receipt": done == len(orders) > 0,
                "each receipt made once": receipts == again,
            }
        result.timeline = await _timeline(ctx, since)
        return result
    finally:
        await _closing(buyer)


async def _kill_job_runners(ctx: Context, replica: str) -> None:
    """kill -9 the replica that took the orders, and a worker if there are any."""
    await ctx.deployment.kill(replica)
    workers = (await ctx.deployment.status()).get("workers") or []
    if workers:
        victim = str(workers[0]["name"])
        await ctx.deployment.kill(victim)
        await asyncio.sleep(1)
        await ctx.deployment.start(victim)


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


def judge_jobs(results: dict[str, Result]) -> Verdict:
    inproc, queue = results.get("stateful"), results.get("stateless")
    if inproc is None or queue is None:
        return "partly true", "needs both runs"
    detail = (
        f"in-process: {inproc.metrics['lost_jobs']}/{inproc.metrics['orders']} receipts lost with "
        f"the replica; queue: {queue.metrics['lost_jobs']}/{queue.metrics['orders']} lost after a "
        "replica and a worker were killed"
    )
    if inproc.metrics["lost_jobs"] > 0 and queue.held:
        return "confirmed", detail
    return ("refuted" if queue.held else "partly true"), detail


# -------------------------------------------------------------------------- chat


async def play_chat(ctx: Context) -> Result:
    """Users spread over replicas talk in one room; one replica dies mid-conversation."""
    since = time.time()
    shoppers = [ctx.shopper(f"chat-{i}-{uuid.uuid4().hex[:4]}") for i in range(ctx.scale(4, 8))]
    per_user, pause = ctx.scale(12, 40), 0.15  # about the pace of a quick typist
    ws_url = ctx.url.replace("http://", "ws://") + "/ws/chat"
    chatters: list[Chatter] = []
    try:
        for s in shoppers:
            await s.register_and_login()
        created = await shoppers[0].request("POST", "/api/chat/rooms", json={"name": "lab"})
        assert created is not None and created.status_code == 201, "could not create a room"
        room = str(created.json()["id"])
        for s in shoppers:
            chatter = Chatter(s, ws_url, room)
            await chatter.connect()
            await chatter.send({"type": "join", "room": room})
            chatters.append(chatter)
        await asyncio.sleep(0.5)
        spread = sorted({c.replica for c in chatters})
        victim = chatters[0].replica

        async def talk(c: Chatter) -> None:
            for k in range(per_user):
                await c.say(f"{c.shopper.name}-{k}", f"message {k}")
                await asyncio.sleep(pause)

        async def crash() -> None:
            await asyncio.sleep(per_user * pause / 2)
            await ctx.deployment.kill(victim)

        await asyncio.gather(crash(), *(talk(c) for c in chatters))
        await asyncio.gather(*(c.flush(within=10) for c in chatters))
        expected = {(c.shopper.name, m) for c in chatters for m in c.acked}
        waits = await asyncio.gather(
            *(c.settle(expected, within=ctx.scale(6, 12)) for c in chatters)
        )
        online = await shoppers[-1].request("GET", "/api/chat/online")
        result = Result("chat", ctx.profile)
        result.metrics = _chat_metrics(chatters, expected, waits)
        result.metrics.update(
            {
                "replicas_used": spread,
                "replica_killed": victim,
                "online_listed": len(online.json().get("users", [])) if online else None,
            }
        )
        if ctx.profile != "stateful":
            result.invariants = {
                "every acknowledged message delivered": result.metrics["lost"] == 0,
                "no message delivered twice": result.metrics["duplicates"] == 0,
                "in order, without gaps": result.metrics["out_of_order"] == 0,
            }
        result.timeline = await _timeline(ctx, since)
        return result
    finally:
        await asyncio.gather(*(c.close() for c in chatters))
        await _closing(*shoppers)


def _chat_metrics(
    chatters: list[Chatter], expected: set[tuple[str, str]], waits: list[float | None]
) -> dict[str, Any]:
    lost = duplicates = disorder = 0
    for c in chatters:
        keys = [(sender, msg) for sender, msg, _ in c.received]
        got = set(keys)
        lost += len(expected - got)
        duplicates += len(keys) - len(got)
        seqs = [seq for _, _, seq in c.received]
        disorder += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
    caught_up = [w for w in waits if w is not None]
    return {
        "acknowledged": len(expected),
        "sent": sum(len(c.acked) + len(c.pending) for c in chatters),
        "expected_deliveries": len(expected) * len(chatters),
        "lost": lost,
        "duplicates": duplicates,
        "out_of_order": disorder,
        "reconnects": sum(c.reconnects for c in chatters),
        "logins_again": sum(c.relogins for c in chatters),
        "max_reconnect_s": round(max((max(c.reconnect_seconds) for c in chatters
                                      if c.reconnect_seconds), default=0.0), 2),
        "catch_up_s": round(max(caught_up), 2) if caught_up else None,
        "clients_caught_up": len(caught_up),
    }  # fmt: skip


def judge_chat(results: dict[str, Result]) -> Verdict:
    mem, shared = results.get("stateful"), results.get("stateless")
    if mem is None or shared is None:
        return "partly true", "needs both runs"
    m, s = mem.metrics, shared.metrics
    detail = (
        f"memory: {m['lost']}/{m['expected_deliveries']} deliveries lost; redis: {s['lost']} lost, "
        f"{s['duplicates']} duplicates; {s['reconnects']} sockets reconnected within "
        f"{s['max_reconnect_s']} s and had every message {s['catch_up_s']} s after the "
        "last send"
    )
    if shared.held and m["lost"] > 0:
        return "confirmed", detail
    return ("partly true" if shared.held else "refuted"), detail


def summary(r: Result) -> str:
    """The one measurement that tells the story of a run, for the verdict table."""
    m = r.metrics
    text = {
        "pizza": lambda: (
            f"session {'kept' if m['session_survived'] else 'lost'}, "
            f"{m['items_lost']}/{m['items_acked']} items lost"
        ),
        "atm": lambda: f"{m['distinct_answers']} answer(s), {m['violations']} violations",
        "sticky-skew": lambda: f"busiest/mean {m['max_over_mean']}",
        "rolling-deploy": lambda: (
            f"{m['sessions_lost']} sessions, {m['items_lost']} items lost, "
            f"{m['failed_requests']} failed"
        ),
        "scale-out": lambda: f"new replica share {m['share_after_add']}",
        "memory": lambda: (
            f"{m['replica_bytes_per_session']} B/login in replica, "
            f"{m['redis_bytes_per_session']} B in Redis"
        ),
        "latency": lambda: f"p50 {m['p50_ms']} ms, p99 {m['p99_ms']} ms",
        "redis-restart": lambda: (
            f"{m['items_lost']} writes lost, back in {m['seconds_to_recover']} s"
        ),
        "chat": lambda: (
            f"{m['lost']}/{m['expected_deliveries']} deliveries lost, {m['duplicates']} duplicates"
        ),
        "uploads": lambda: (
            f"read on {m['readable_via_other_replicas']}/{m['other_replicas']} other replicas, "
            f"{m['readable_after_uploader_killed']}/{m['reads_after_kill']} after a kill"
        ),
        "jobs": lambda: f"{m['lost_jobs']}/{m['orders']} receipts lost",
    }.get(r.name)
    mark = "" if r.held else " [invariant VIOLATED]"
    return f"{r.name}: {text() if text else 'ran'}{mark}"


def _pick(runs: dict[str, dict[str, Result]], scenario: str, profile: str) -> Result | None:
    return runs.get(scenario, {}).get(profile)


def judge_c1(runs: dict[str, dict[str, Result]]) -> Verdict | None:
    rr = _pick(runs, "sticky-skew", "stateless")
    crash = _pick(runs, "pizza", "stateless")
    if rr is None:
        return None
    even = rr.metrics["max_over_mean"] <= 1.1
    detail = f"round-robin busiest/mean {rr.metrics['max_over_mean']}"
    if crash is not None:
        detail += (
            f"; after {crash.metrics['replica_killed']} died, "
            f"{crash.metrics['served_after_kill']} served the same session"
        )
        even = even and crash.metrics["session_survived"]
    return ("confirmed" if even else "partly true"), detail


def judge_c10(runs: dict[str, dict[str, Result]]) -> Verdict | None:
    token = _pick(runs, "pizza", "token")
    if token is None:
        return None
    revoked = token.metrics["logout_all_refused_everywhere"]
    detail = (
        f"logout-all {'held' if revoked else 'did NOT hold'} on every replica, because each "
        "request checks the Redis deny-list (one lookup, not zero)"
    )
    tok, shared = _pick(runs, "latency", "token"), _pick(runs, "latency", "stateless")
    if tok and shared:
        detail += f"; p50 token {tok.metrics['p50_ms']} ms vs session {shared.metrics['p50_ms']} ms"
    return ("partly true" if revoked else "refuted"), detail


def judge_c13(runs: dict[str, dict[str, Result]]) -> Verdict | None:
    mem, db = _pick(runs, "atm", "stateful"), _pick(runs, "atm", "stateless")
    if mem is None or db is None:
        return None
    detail = (
        f"one SQL database gave {db.metrics['distinct_answers']} answer with "
        f"{db.metrics['violations']} violations where per-replica state gave "
        f"{mem.metrics['distinct_answers']} answers"
    )
    fast, slow = _pick(runs, "latency", "stateful"), _pick(runs, "latency", "stateless")
    if fast and slow:
        detail += (
            f"; it does not reduce latency here (p50 {slow.metrics['p50_ms']} ms shared vs "
            f"{fast.metrics['p50_ms']} ms local), and there are no separate stores to synchronise"
        )
    return "partly true", detail


#: Claims whose verdict needs more than one scenario.
CLAIM_JUDGES: dict[str, Callable[[dict[str, dict[str, Result]]], Verdict | None]] = {
    "C1": judge_c1,
    "C10": judge_c10,
    "C13": judge_c13,
}


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("pizza", ("C2", "C10", "C14"), ("stateful", "stateless", "token"),
                 play_pizza, judge_pizza),
        Scenario("atm", ("C8", "C13"), ("stateful", "stateless"), play_atm, judge_atm),
        Scenario("chat", ("C9",), ("stateful", "stateless"), play_chat, judge_chat),
        Scenario("sticky-skew", ("C3", "C1"), ("stateful", "stateless"),
                 play_sticky_skew, judge_sticky_skew),
        Scenario("rolling-deploy", ("C4",), ("stateful", "stateless"),
                 play_rolling_deploy, judge_rolling_deploy),
        Scenario("scale-out", ("C7",), ("stateful", "stateless"),
                 play_scale_out, judge_scale_out),
        Scenario("memory", ("C5",), ("stateful", "stateless"), play_memory, judge_memory,
                 replicas=1),
        Scenario("latency", ("C6", "C13"), ("stateful", "stateless", "token"),
                 play_latency, judge_latency),
        Scenario("redis-restart", ("C14",), ("stateless",),
                 play_redis_restart, judge_redis_restart),
        # Only the placement under test differs: sessions (uploads) and orders (jobs)
        # are shared in both runs, so what is lost is the file or the job itself.
        Scenario("uploads", ("C11",), ("stateful", "stateless"), play_uploads, judge_uploads,
                 place={"session": "redis"}),
        Scenario("jobs", ("C12",), ("stateful", "stateless"), play_jobs, judge_jobs,
                 place={"ledger": "db"}, env={"STATELAB_JOB_HOLD_SECONDS": "3"}),
    )
}  # fmt: skip


async def run_scenario(
    scenario: Scenario, profile: str, run_root: Path, quick: bool, sessions: int | None = None
) -> Result:
    """One scenario in one profile, in a deployment of its own."""
    run_dir = run_root / f"{scenario.name}-{profile}"
    with Deployment(
        run_dir, profile, scenario.replicas, scenario.place, scenario.env
    ) as deployment:
        result = await scenario.play(Context(deployment, profile, quick, sessions=sessions))
    result.claims = scenario.claims
    return result
