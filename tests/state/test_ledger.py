"""The ledger placements as stores: one outcome per key, even when a commit
succeeds and its driver then fails; keys forgotten after their TTL in bounded
batches; a memory ledger that keeps a bounded number of keys; accounts opened by
racing first top-ups. SQL ledgers run on SQLite and on PostgreSQL; the replicated
ledger (one copy on a real Redis) answers the same outcomes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from statelab.db import models
from statelab.db.engine import make_engine, sessionmaker
from statelab.db.migrate import upgrade
from statelab.domain.errors import InsufficientFunds, Unavailable
from statelab.domain.shop import load_menu, price
from statelab.state.ledger import Idempotency, Ledger, MemoryLedger, SqlLedger
from tests.state.support import replicated_copy
from tests.support import unique

TTL = 60.0  # seconds; the tests move the clock by passing ``now_ms`` to sweep
DAY_MS = 24 * 3600 * 1000


def _migrated(request: pytest.FixtureRequest, database: str) -> str:
    """The test's SQLite file, or a fresh PostgreSQL database brought to the head."""
    if database == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
        return url
    url = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def sql_url(request: pytest.FixtureRequest) -> str:
    return _migrated(request, request.param)


@pytest.fixture
async def sql_sessions(sql_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(sql_url)
    try:
        yield sessionmaker(engine)
    finally:
        await engine.dispose()


@dataclass
class Book:
    """A ledger of one placement and a user it can credit."""

    ledger: Ledger
    user_id: int


#: A placement and where it keeps its data: no URL (memory), a migrated SQL
#: database's or a Redis's.
Where = tuple[str, str | None]


def _where(request: pytest.FixtureRequest) -> Where:
    """The fixture's placement and its store (resolved here, outside the event loop:
    migrations run their own)."""
    placement: str = request.param
    if placement == "memory":
        return placement, None
    if placement == "replicated":
        return placement, request.getfixturevalue("redis_url")
    return placement, _migrated(request, placement)


@pytest.fixture(params=["memory", "sqlite", "postgres", "replicated"])
def anywhere(request: pytest.FixtureRequest) -> Where:
    return _where(request)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def swept_by_the_clock(request: pytest.FixtureRequest) -> Where:
    """The placements whose ``sweep`` forgets by the clock it is shown (the replicated
    ledger forgets by its log's clock alone: tests/state/test_replicated_ledger.py)."""
    return _where(request)


@asynccontextmanager
async def open_book(where: Where) -> AsyncIterator[Book]:
    placement, url = where
    if url is None:
        yield Book(MemoryLedger(TTL, max_keys=1000), 1)
    elif placement == "replicated":
        async with replicated_copy(url, TTL, 1000) as replicated:
            yield Book(replicated, 1)
    else:
        engine = make_engine(url)
        try:
            sessions = sessionmaker(engine)
            yield Book(SqlLedger(sessions, TTL), await new_user(sessions))
        finally:
            await engine.dispose()


@pytest.fixture
async def book(anywhere: Where) -> AsyncIterator[Book]:
    """Each placement; the SQL one on SQLite and on PostgreSQL."""
    async with open_book(anywhere) as opened:
        yield opened


@pytest.fixture
async def sweepable(swept_by_the_clock: Where) -> AsyncIterator[Book]:
    async with open_book(swept_by_the_clock) as opened:
        yield opened


async def new_user(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as db, db.begin():
        user = models.User(username=unique("ledger"), password_hash="-")
        db.add(user)
        await db.flush()
        return user.id


def idem(key: str, body: str = "same") -> Idempotency:
    return Idempotency(key, f"fingerprint-of-{body}")


def later(ms: int) -> int:
    """Unix ms, ``ms`` from now: the clock a sweep is shown."""
    return int(time.time() * 1000) + ms


# ----------------------------------------------------------------- outcomes


async def test_outcomes_say_what_happened_and_replays_repeat_them(book: Book) -> None:
    ledger, user_id = book.ledger, book.user_id
    applied = await ledger.top_up(user_id, 500, idem("t"))
    assert (applied.kind, applied.body, applied.replayed) == (
        "applied",
        {"balance_cents": 500},
        False,
    )

    refused = await ledger.withdraw(user_id, 800, idem("w"))
    assert refused.kind == "refused"
    assert isinstance(refused.refusal, InsufficientFunds)
    await ledger.top_up(user_id, 1000, idem("t2"))
    # Money arrived since, but the key already has its answer: the same refusal.
    again = await ledger.withdraw(user_id, 800, idem("w"))
    assert again.replayed and again.kind == "refused"
    assert isinstance(again.refusal, InsufficientFunds)
    assert again.refusal.detail == refused.refusal.detail
    assert await ledger.balance(user_id) == 1500

    replayed = await ledger.top_up(user_id, 500, idem("t"))
    assert (replayed.kind, replayed.body, replayed.replayed) == ("applied", applied.body, True)
    assert await ledger.balance(user_id) == 1500


async def test_a_refused_checkout_leaves_no_order_and_a_paid_one_replays(book: Book) -> None:
    ledger, user_id = book.ledger, book.user_id
    cart = price({4: 1}, load_menu())
    refused = await ledger.checkout(user_id, cart, idem("c1"))
    assert refused.kind == "refused"
    assert isinstance(refused.refusal, InsufficientFunds)
    assert await ledger.orders(user_id) == []

    await ledger.top_up(user_id, cart.total_cents, idem("t"))
    paid = await ledger.checkout(user_id, cart, idem("c2"))
    assert (paid.kind, paid.body["balance_cents"]) == ("created", 0)
    replay = await ledger.checkout(user_id, cart, idem("c2"))
    assert (replay.kind, replay.body, replay.replayed) == ("created", paid.body, True)
    assert [o["id"] for o in await ledger.orders(user_id)] == [paid.body["id"]]


# ------------------------------------------------- a commit that succeeds, then raises


class _Tripwire(Session):
    """The ORM session of a ledger whose money-moving commits raise after the
    database committed them: a driver failing on the way back."""


def _note_money(session: Session, _context: Any) -> None:
    # after_flush still sees what was flushed as new.
    if any(isinstance(obj, models.LedgerEntry) for obj in session.new):
        session.info["moved_money"] = True


def _raise_after_commit(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        return  # a savepoint was released: nothing is committed yet
    if session.info.pop("moved_money", False):
        raise ConnectionResetError("the connection broke after the commit")


@pytest.fixture
def tripwire() -> Iterator[None]:
    event.listen(_Tripwire, "after_flush", _note_money)
    event.listen(_Tripwire, "after_commit", _raise_after_commit)
    try:
        yield
    finally:
        event.remove(_Tripwire, "after_flush", _note_money)
        event.remove(_Tripwire, "after_commit", _raise_after_commit)


async def test_a_commit_that_raises_after_succeeding_is_replayed_not_applied_again(
    sql_url: str, tripwire: None
) -> None:
    engine = make_engine(sql_url)
    try:
        sessions = async_sessionmaker(engine, expire_on_commit=False, sync_session_class=_Tripwire)
        ledger, user = SqlLedger(sessions, TTL), await new_user(sessions)
        with pytest.raises(Unavailable):
            await ledger.top_up(user, 700, idem("k"))
        assert await ledger.balance(user) == 700, "the commit went through"

        retry = await ledger.top_up(user, 700, idem("k"))
        assert retry.replayed
        assert retry.body == {"balance_cents": 700}
        assert await ledger.balance(user) == 700
    finally:
        await engine.dispose()


# -------------------------------------------------------------------- expiry


async def test_sweep_forgets_expired_keys_oldest_first_in_bounded_batches(
    sweepable: Book,
) -> None:
    ledger, user_id = sweepable.ledger, sweepable.user_id
    for i in range(5):
        await ledger.top_up(user_id, 10, idem(f"k{i}"))
    ttl_ms = int(TTL * 1000)

    assert await ledger.sweep(later(ttl_ms // 2)) == 0
    assert (await ledger.replay(user_id, idem("k0"))) is not None
    assert await ledger.sweep(later(ttl_ms + 1000), batch=2) == 2
    assert await ledger.sweep(later(ttl_ms + 1000), batch=2) == 2
    assert await ledger.sweep(later(ttl_ms + 1000), batch=2) == 1
    assert await ledger.sweep(later(ttl_ms + 1000), batch=2) == 0

    assert await ledger.replay(user_id, idem("k4")) is None
    fresh = await ledger.top_up(user_id, 10, idem("k0"))  # a forgotten key is a new request
    assert not fresh.replayed
    assert await ledger.balance(user_id) == 60


async def test_sweep_keeps_keys_younger_than_the_ttl(sweepable: Book) -> None:
    ledger, user_id = sweepable.ledger, sweepable.user_id
    await ledger.top_up(user_id, 10, idem("old"))
    assert await ledger.sweep(later(-DAY_MS)) == 0
    assert await ledger.sweep(later(int(TTL * 1000) - 5000)) == 0
    replay = await ledger.replay(user_id, idem("old"))
    assert replay is not None and replay.replayed


async def test_memory_ledger_keeps_at_most_its_bound_of_keys() -> None:
    bound, flood = 50, 600
    ledger = MemoryLedger(TTL, max_keys=bound)
    for i in range(flood):
        await ledger.top_up(7, 1, idem(f"flood{i}"))
    remembered = [await ledger.replay(7, idem(f"flood{i}")) is not None for i in range(flood)]
    # Exactly the newest ``bound`` keys: the oldest were forgotten first.
    assert remembered == [False] * (flood - bound) + [True] * bound
    assert await ledger.balance(7) == flood


async def test_memory_ledger_forgets_expired_keys_on_its_own() -> None:
    ledger = MemoryLedger(0.2, max_keys=100)
    await ledger.top_up(7, 100, idem("k"))
    await asyncio.sleep(0.3)
    # The next money move forgets what expired, without a sweep.
    await ledger.top_up(7, 1, idem("other"))
    assert await ledger.replay(7, idem("k")) is None


# ---------------------------------------------------------- opening an account


async def test_racing_first_top_ups_open_one_account(
    sql_sessions: async_sessionmaker[AsyncSession],
) -> None:
    ledger, user = SqlLedger(sql_sessions, TTL), await new_user(sql_sessions)
    outcomes = await asyncio.gather(
        *(ledger.top_up(user, 100, idem(f"first{i}")) for i in range(8))
    )
    assert [o.kind for o in outcomes] == ["applied"] * 8
    assert sorted(o.body["balance_cents"] for o in outcomes) == [100 * i for i in range(1, 9)]
    assert await ledger.balance(user) == 800
    async with sql_sessions() as db:
        entries = await db.scalar(select(func.count()).where(models.LedgerEntry.user_id == user))
    assert entries == 8
