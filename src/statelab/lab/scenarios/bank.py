"""Money: the ATM, and one shared ledger against copies kept in sync.

- ``atm`` (C8, C13): one customer withdraws through one replica and asks every
  replica for the balance; then a bank workload runs through the load balancer
  while replicas are killed and started again, and every account is audited.
- ``sync-vs-shared`` (C13): the same bank workload against one shared SQL ledger
  (``ledger=db``, PostgreSQL) and against per-replica ledgers that apply one ordered
  replication log (``ledger=replicated``): write and read latency, how long until a
  read through every replica shows a write (for the shared database: one read), and
  the ATM check.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any, TypedDict

import httpx

from statelab.lab.deployment import replica_urls
from statelab.lab.framework import (
    Context,
    Played,
    Scenario,
    Variant,
    closing,
    percentile,
)
from statelab.lab.shopper import Shopper

TOP_UP, WITHDRAW = "/api/account/top-up", "/api/account/withdraw"
Acked = dict[str, list[tuple[str, int, str, dict[str, Any]]]]


class BankMetrics(TypedDict):
    acknowledged_operations: int
    retries: int
    total_topped_up_cents: int
    total_withdrawn_cents: int
    sum_of_balances_cents: int
    violations: int
    negative_balances: int
    double_charges: int


class AtmMetrics(BankMetrics):
    balances_seen: dict[str, int | None]
    distinct_answers: int


async def atm_answers(ctx: Context) -> dict[str, int | None]:
    """Top up and withdraw through one replica; the balance each replica reports."""
    urls = await replica_urls(ctx.deployment)
    name = f"atm-{uuid.uuid4().hex[:6]}"
    tellers = {rid: ctx.shopper(name, url) for rid, url in sorted(urls.items())}
    try:
        for teller in tellers.values():
            await teller.register_and_login()
        first = next(iter(tellers.values()))
        await first.money(TOP_UP, amount_cents=10_000)
        await first.money(WITHDRAW, amount_cents=3_000)
        return {rid: await t.balance() for rid, t in tellers.items()}
    finally:
        await closing(*tellers.values())


def _final(r: httpx.Response) -> bool:
    """A 200 or a refusal is an answer; a 503 or a 409 'in flight' is not yet."""
    return r.status_code == 200 or (r.status_code == 409 and "in flight" not in r.text)


async def bank_workload(
    ctx: Context, users: list[Shopper], ops: int, chaos: bool, latencies: dict[str, list[float]]
) -> BankMetrics:
    """Random top-ups and withdrawals (each with its own Idempotency-Key, retried until
    answered); with ``chaos`` a replica is killed and started again twice meanwhile."""
    acked: Acked = {u.name: [] for u in users}
    retries = 0
    rng = random.Random(7)

    async def customer(u: Shopper) -> None:
        nonlocal retries
        for _ in range(ops):
            path = rng.choice((TOP_UP, WITHDRAW))
            amount, key = rng.randint(50, 500), uuid.uuid4().hex
            for attempt in range(8):
                began = time.perf_counter()
                r = await u.money(path, key, amount_cents=amount)
                if r is not None and _final(r):
                    latencies["write"].append((time.perf_counter() - began) * 1000)
                    if r.status_code == 200:
                        acked[u.name].append((path, amount, key, r.json()))
                    break
                if r is not None and r.status_code == 401:
                    await u.login()  # the session died with its replica
                retries += attempt == 0
                await asyncio.sleep(0.2)
            began = time.perf_counter()
            if await u.balance() is not None:
                latencies["read"].append((time.perf_counter() - began) * 1000)

    killer = asyncio.create_task(_kill_and_restart(ctx, times=2, pause=1.5)) if chaos else None
    await asyncio.gather(*(customer(u) for u in users))
    if killer is not None:
        await killer
    return await _audit(users, acked, retries)


async def _kill_and_restart(ctx: Context, times: int, pause: float) -> None:
    rng = random.Random(3)
    for _ in range(times):
        await asyncio.sleep(pause)
        victim = rng.choice(sorted(await replica_urls(ctx.deployment)))
        await ctx.deployment.kill(victim)
        await asyncio.sleep(pause)
        await ctx.deployment.start(victim)


async def _audit(users: list[Shopper], acked: Acked, retries: int) -> BankMetrics:
    """Every balance against what was acknowledged; replays must not charge again."""
    violations = negative = double = topped = paid = held = 0
    for u in users:
        expected = 0
        for path, amount, _, _ in acked[u.name]:
            expected += amount if path == TOP_UP else -amount
            topped += amount if path == TOP_UP else 0
            paid += amount if path == WITHDRAW else 0
        balance = await u.balance()
        if balance is None:
            await u.login()
            balance = await u.balance()
        held += balance or 0
        violations += balance != expected
        negative += (balance or 0) < 0
        for path, amount, key, body in acked[u.name][-3:]:
            r = await u.money(path, key, amount_cents=amount)
            if r is None or r.status_code != 200 or r.json() != body:
                double += 1
        if await u.balance() != balance:
            double += 1
    return BankMetrics(
        acknowledged_operations=sum(len(v) for v in acked.values()),
        retries=retries,
        total_topped_up_cents=topped,
        total_withdrawn_cents=paid,
        sum_of_balances_cents=held,
        violations=violations,
        negative_balances=negative,
        double_charges=double,
    )


def _bank_invariants(metrics: BankMetrics, distinct: int) -> dict[str, bool]:
    return {
        "one answer on every replica": distinct == 1,
        "money conserved (no violations)": metrics["violations"] == 0,
        "no balance below zero": metrics["negative_balances"] == 0,
        "one charge per Idempotency-Key": metrics["double_charges"] == 0,
    }


async def play_atm(ctx: Context) -> Played:
    answers = await atm_answers(ctx)
    users = [ctx.shopper(f"bank-{i}-{uuid.uuid4().hex[:4]}") for i in range(ctx.scale(4, 8))]
    try:
        for u in users:
            await u.register_and_login()
        bank = await bank_workload(ctx, users, ctx.scale(25, 80), True, {"write": [], "read": []})
    finally:
        await closing(*users)
    distinct = len(set(answers.values()))
    metrics = AtmMetrics(**bank, balances_seen=answers, distinct_answers=distinct)
    if ctx.local("ledger"):
        invariants = {"no balance below zero": bank["negative_balances"] == 0}
    else:
        invariants = _bank_invariants(bank, distinct)
    return Played(invariants, dict(metrics), await ctx.timeline())


class SyncMetrics(BankMetrics):
    balances_seen: dict[str, int | None]
    distinct_answers: int
    write_p50_ms: float
    write_p99_ms: float
    read_p50_ms: float
    read_p99_ms: float
    staleness_p50_ms: float
    staleness_max_ms: float
    staleness_samples: int


async def staleness(ctx: Context, samples: int) -> list[float]:
    """Milliseconds from a write's answer (through one replica) until every replica
    reads the new balance, polling each directly."""
    urls = await replica_urls(ctx.deployment)
    name = f"stale-{uuid.uuid4().hex[:6]}"
    readers = {rid: ctx.shopper(name, url) for rid, url in sorted(urls.items())}
    lags: list[float] = []
    try:
        for reader in readers.values():
            await reader.register_and_login()
        writer = next(iter(readers.values()))
        for _ in range(samples):
            r = await writer.money(TOP_UP, amount_cents=100)
            if r is None or r.status_code != 200:
                continue
            answered, want = time.perf_counter(), int(r.json()["balance_cents"])
            pending = set(readers)
            deadline = answered + 5.0
            while pending and time.perf_counter() < deadline:
                seen = await asyncio.gather(*(readers[rid].balance() for rid in sorted(pending)))
                pending -= {rid for rid, b in zip(sorted(pending), seen, strict=True) if b == want}
            lags.append((time.perf_counter() - answered) * 1000)
        return sorted(lags)
    finally:
        await closing(*readers.values())


async def play_sync_vs_shared(ctx: Context) -> Played:
    answers = await atm_answers(ctx)
    lags = await staleness(ctx, ctx.scale(20, 60))
    users = [ctx.shopper(f"sync-{i}-{uuid.uuid4().hex[:4]}") for i in range(ctx.scale(4, 8))]
    latencies: dict[str, list[float]] = {"write": [], "read": []}
    try:
        for u in users:
            await u.register_and_login()
        bank = await bank_workload(ctx, users, ctx.scale(25, 80), False, latencies)
    finally:
        await closing(*users)
    writes, reads = sorted(latencies["write"]), sorted(latencies["read"])
    distinct = len(set(answers.values()))
    metrics = SyncMetrics(
        **bank,
        balances_seen=answers,
        distinct_answers=distinct,
        write_p50_ms=percentile(writes, 50),
        write_p99_ms=percentile(writes, 99),
        read_p50_ms=percentile(reads, 50),
        read_p99_ms=percentile(reads, 99),
        staleness_p50_ms=percentile(lags, 50),
        staleness_max_ms=round(max(lags, default=0.0), 2),
        staleness_samples=len(lags),
    )
    return Played(_bank_invariants(bank, distinct), dict(metrics), await ctx.timeline())


def ledger_placements(quick: bool) -> list[Variant]:
    return [Variant("stateful", "stateful"), Variant("stateless")]


def shared_or_synced(quick: bool) -> list[Variant]:
    # PostgreSQL in both: a shared SQLite file serialises every writer, which is not
    # the shared database the claim has in mind.
    pg = ("--database", "postgres")
    return [
        Variant("db", place={"ledger": "db"}, options=pg),
        Variant("replicated", place={"ledger": "replicated"}, options=pg),
    ]


SCENARIOS = (
    Scenario("atm", ("C8",), "one account read through every replica; a bank under kills",
             ledger_placements, play_atm,
             lambda m: f"{m['distinct_answers']} answer(s), {m['violations']} violations"),
    Scenario("sync-vs-shared", ("C13",),
             "one shared SQL ledger against per-replica ledgers kept in sync by a log",
             shared_or_synced, play_sync_vs_shared,
             lambda m: f"write p50 {m['write_p50_ms']} ms, read p50 {m['read_p50_ms']} ms, "
                       f"stale up to {m['staleness_max_ms']} ms"),
)  # fmt: skip
