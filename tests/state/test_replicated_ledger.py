"""The replicated ledger as a store: copies (one per replica, each with its own Redis
client) applying one log on a real Redis. Every copy computes the same outcomes and
ends with the same balances and orders; a duplicate entry is applied once; a copy
that starts replays the log before it answers; keys expire by the log's clock; a
log that lost entries makes a copy rebuild itself; Redis down is ``Unavailable``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from statelab.cluster.redis import ClusterRedis
from statelab.cluster.servers import RedisServer
from statelab.domain.errors import IdempotencyMismatch, Unavailable
from statelab.domain.shop import load_menu, price
from statelab.state import keys
from statelab.state.ledger import Idempotency, Outcome
from statelab.state.replicated_ledger import APPEND, ORIGIN, ReplicatedLedger, TopUp
from tests.state.support import replicated_copy

TTL = 60.0
MAX_KEYS = 10_000

Copies = Callable[..., Awaitable[ReplicatedLedger]]


def idem(key: str, body: str = "same") -> Idempotency:
    return Idempotency(key, f"fingerprint-of-{body}")


@pytest.fixture
async def copies(redis_url: str) -> AsyncIterator[Copies]:
    """``await copies(url=..., ttl=..., ready=True)`` -> a started copy with Redis
    clients of its own (on the test's Redis unless ``url`` says otherwise)."""
    async with AsyncExitStack() as stack:

        async def copy(url: str = redis_url, ttl: float = TTL, ready: bool = True,
                       wait: float = 5.0) -> ReplicatedLedger:  # fmt: skip
            ledger = await stack.enter_async_context(replicated_copy(url, ttl, MAX_KEYS, wait=wait))
            if ready:
                await until(lambda: ledger.ready)
            return ledger

        yield copy


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def caught_up(*ledgers: ReplicatedLedger) -> None:
    """Until every copy has applied the same last entry."""
    await until(lambda: len({ledger.position for ledger in ledgers}) == 1)


async def state(ledger: ReplicatedLedger, users: range) -> dict[int, Any]:
    """Everything a copy says about these users."""
    return {u: (await ledger.balance(u), await ledger.orders(u)) for u in users}


# ------------------------------------------------------------------ determinism


async def test_concurrent_withdrawals_through_two_copies_never_overdraw(copies: Copies) -> None:
    a, b = await copies(), await copies()
    await a.top_up(1, 1000, idem("t"))

    async def withdraw(i: int) -> Outcome:
        return await (a, b)[i % 2].withdraw(1, 70, idem(f"w{i}"))

    outcomes = await asyncio.gather(*(withdraw(i) for i in range(40)))
    applied = [o for o in outcomes if o.kind == "applied"]
    assert len(applied) == 1000 // 70  # 14 pass, 26 find too little money
    assert {o.kind for o in outcomes} == {"applied", "refused"}
    # The log ordered them: each withdrawal saw the balance the one before it left.
    assert sorted(o.body["balance_cents"] for o in applied) == [
        1000 - 70 * n for n in range(14, 0, -1)
    ]
    await caught_up(a, b)
    assert await a.balance(1) == await b.balance(1) == 1000 - 70 * 14


async def test_one_charge_per_key_when_retries_race_through_both_copies(copies: Copies) -> None:
    a, b = await copies(), await copies()
    await a.top_up(2, 5000, idem("t"))
    outcomes = await asyncio.gather(
        *((a, b)[i % 2].withdraw(2, 100, idem("same")) for i in range(12))
    )
    assert {o.body["balance_cents"] for o in outcomes} == {4900}
    assert [o.replayed for o in outcomes].count(False) == 1
    await caught_up(a, b)
    assert await a.balance(2) == await b.balance(2) == 4900


async def test_every_copy_and_a_late_one_end_with_the_same_books(copies: Copies) -> None:
    a, b = await copies(), await copies()
    cart = price({4: 1, 11: 2}, load_menu())

    async def customer(user: int) -> None:
        for n in range(6):
            ledger = (a, b)[(user + n) % 2]
            await ledger.top_up(user, 900 * n + 1, idem(f"t{n}"))
            await ledger.withdraw(user, 100 * n + 50, idem(f"w{n}"))
            await ledger.checkout(user, cart, idem(f"c{n}"))

    await asyncio.gather(*(customer(u) for u in range(10, 16)))
    late = await copies()
    await caught_up(a, b, late)
    books = [await state(copy, range(10, 16)) for copy in (a, b, late)]
    assert books[0] == books[1] == books[2]
    paid = [o for _, orders in books[0].values() for o in orders]
    assert paid, "some checkouts were paid"
    # Order ids count the paid orders in log order: the same on every copy, no gaps.
    assert sorted(o["id"] for o in paid) == list(range(1, len(paid) + 1))


async def test_a_duplicate_entry_is_applied_once(copies: Copies, redis_url: str) -> None:
    a, b = await copies(), await copies()
    await a.top_up(3, 500, idem("t"))
    # The same command appended twice, as when a client library resends an append
    # whose reply it lost: the second entry replays the first.
    command = TopUp(id="dup", user=3, key="twice", fp="fingerprint-of-same", amount=200)
    async with Redis.from_url(redis_url, decode_responses=True) as raw:
        for _ in range(2):
            await raw.eval(APPEND.body, 1, keys.ledger_log(), command.model_dump_json())
    late = await copies()
    await caught_up(a, b, late)
    assert await a.balance(3) == await b.balance(3) == await late.balance(3) == 700
    again = await b.top_up(3, 200, idem("twice"))
    assert again.replayed and again.body == {"balance_cents": 700}


async def test_a_key_with_another_body_is_refused_by_every_copy(copies: Copies) -> None:
    a, b = await copies(), await copies()
    await a.top_up(4, 100, idem("k", "a hundred"))
    with pytest.raises(IdempotencyMismatch):
        await b.top_up(4, 999, idem("k", "another body"))
    await caught_up(a, b)
    assert await a.balance(4) == await b.balance(4) == 100


async def test_receipts_go_through_the_log_and_attach_once(copies: Copies) -> None:
    a, b = await copies(), await copies()
    await a.top_up(5, 5000, idem("t"))
    order = (await a.checkout(5, price({4: 1}, load_menu()), idem("c"))).body
    assert await b.set_receipt(order["id"], "receipt-1") is True
    assert await a.set_receipt(order["id"], "receipt-2") is False
    await caught_up(a, b)
    assert (await a.order(5, order["id"]))["receipt"] == "receipt-1"
    assert (await b.order(5, order["id"]))["receipt"] == "receipt-1"
    assert (await b.order(5, order["id"]))["created_at"] == order["created_at"]


# ----------------------------------------------------------------------- starting


async def test_a_starting_copy_answers_only_after_replaying_the_log(copies: Copies) -> None:
    writer = await copies()
    for n in range(300):
        await writer.top_up(6, 1, idem(f"t{n}"))
    late = await copies(ready=False)
    # Asked before its replay is done, it waits for it rather than answering
    # from a half-built copy.
    assert not late.ready
    assert await late.balance(6) == 300
    assert late.ready


async def test_a_log_that_does_not_start_at_the_beginning_is_not_replayed(
    copies: Copies, redis_url: str
) -> None:
    writer = await copies()
    for n in range(5):
        await writer.top_up(7, 10, idem(f"t{n}"))
    async with Redis.from_url(redis_url, decode_responses=True) as raw:
        assert await raw.xtrim(keys.ledger_log(), maxlen=2, approximate=False) == 3
    late = await copies(ready=False, wait=0.5)
    with pytest.raises(Unavailable):
        await late.balance(7)  # 20 of 50 cents: no answer is better than that one
    assert not late.ready


# ------------------------------------------------------------------------- expiry


async def test_keys_expire_by_the_log_clock_alike_on_every_copy(copies: Copies) -> None:
    a, b = await copies(ttl=0.5), await copies(ttl=0.5)
    await a.top_up(8, 100, idem("k", "a hundred"))
    # A sweep told of a far future keeps the key: a later entry might yet find it.
    assert await b.sweep(int(time.time() * 1000) + 3_600_000) == 0
    await asyncio.sleep(0.6)
    # Past the TTL by the time of the next entry: the key is new again everywhere.
    fresh = await b.top_up(8, 250, idem("k", "another body"))
    assert (fresh.kind, fresh.replayed, fresh.body) == ("applied", False, {"balance_cents": 350})
    await caught_up(a, b)
    assert await a.balance(8) == 350
    replayed = await a.replay(8, idem("k", "another body"))
    assert replayed is not None and replayed.body == {"balance_cents": 350}


# ----------------------------------------------------------------------- failures


async def test_redis_unreachable_is_unavailable_and_not_ready(
    copies: Copies, closed_port: int
) -> None:
    ledger = await copies(url=f"redis://127.0.0.1:{closed_port}/0", ready=False, wait=0.5)
    with pytest.raises(Unavailable):
        await ledger.top_up(9, 100, idem("t"))
    with pytest.raises(Unavailable):
        await ledger.balance(9)
    assert not ledger.ready


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, without persistence: a restart empties it."""
    server = RedisServer(tmp_path / "redis", persistence="off")
    with server:
        yield server


async def test_a_copy_rebuilds_itself_when_the_log_lost_what_it_applied(
    copies: Copies, own_redis: RedisServer
) -> None:
    a, b = await copies(url=own_redis.url), await copies(url=own_redis.url)
    await a.top_up(10, 500, idem("t"))
    await caught_up(a, b)
    assert await b.balance(10) == 500

    own_redis.stop()
    with pytest.raises(Unavailable):
        await a.top_up(10, 100, idem("down"))
    assert await a.balance(10) == 500  # reads answer from the copy meanwhile
    own_redis.start()
    own_redis.wait_ready()
    await until(lambda: a.rebuilds == b.rebuilds == 1)
    # The log is empty again: so is every copy, instead of keeping money the log
    # no longer has, and new entries apply from there alike.
    assert await a.balance(10) == await b.balance(10) == 0
    await b.top_up(10, 70, idem("t2"))
    await caught_up(a, b)
    assert await a.balance(10) == 70
    late = await copies(url=own_redis.url)
    assert await late.balance(10) == 70


async def test_a_redis_that_cannot_take_writes_is_unavailable_and_nothing_is_appended(
    copies: Copies, own_redis: RedisServer, closed_port: int
) -> None:
    ledger = await copies(url=own_redis.url)
    await ledger.top_up(11, 100, idem("t"))
    async with Redis.from_url(own_redis.url, decode_responses=True) as raw:
        await raw.config_set("maxmemory", 1)  # and noeviction: writes are refused
        with pytest.raises(Unavailable):
            await ledger.top_up(11, 100, idem("oom"))
        await raw.config_set("maxmemory", 0)
        await raw.replicaof("127.0.0.1", closed_port)  # a replica: read-only
        with pytest.raises(Unavailable):
            await ledger.top_up(11, 100, idem("read-only"))
        await raw.replicaof("NO", "ONE")
        await raw.config_set("min-replicas-to-write", 1)  # and none is connected
        with pytest.raises(Unavailable):
            await ledger.top_up(11, 100, idem("no-replicas"))
        await raw.config_set("min-replicas-to-write", 0)
        assert await raw.xlen(keys.ledger_log()) == 1
    assert await ledger.balance(11) == 100


async def test_an_append_no_redis_replica_confirmed_is_unavailable_then_answered_once(
    redis_url: str,
) -> None:
    # The test's Redis has no replicas: WAIT 1 times out after every append.
    async with replicated_copy(redis_url, TTL, MAX_KEYS, wait_replicas=1) as ledger:
        with pytest.raises(Unavailable):
            await ledger.top_up(13, 100, idem("t"))
        # Not acknowledged, yet in the log: the copy applies it, and the retry with the
        # key answers it from there (a failover could still have lost it; it did not).
        await until(lambda: ledger.position != ORIGIN)
        again = await ledger.top_up(13, 100, idem("t"))
        assert again.replayed and again.body == {"balance_cents": 100}


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[ClusterRedis]:
    """A Redis Cluster (three primaries, a replica each) of this test's own."""
    topology = ClusterRedis(tmp_path / "cluster", "off")
    topology.start()
    try:
        yield topology
    finally:
        topology.stop()


async def test_copies_over_a_redis_cluster_apply_one_log(
    copies: Copies, own_cluster: ClusterRedis
) -> None:
    # The log is one key, so one slot: its script and blocking reads go to one primary.
    a, b = await copies(url=own_cluster.url), await copies(url=own_cluster.url)
    await a.top_up(12, 1000, idem("t"))
    outcomes = await asyncio.gather(
        *((a, b)[i % 2].withdraw(12, 300, idem(f"w{i}")) for i in range(6))
    )
    assert [o.kind for o in outcomes].count("applied") == 3
    await caught_up(a, b)
    assert await a.balance(12) == await b.balance(12) == 100
