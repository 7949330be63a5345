"""Sessions and carts in SQL (``session=db``, ``cart=db``) as stores, on SQLite and
PostgreSQL: the semantics of the Redis placements (idle and absolute expiry, a
device list, logout-all; atomic cart changes with their limits), concurrent changes
through two engines (two replicas), and the sweep of expired rows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from statelab.db import models
from statelab.db.engine import make_engine, sessionmaker
from statelab.domain.errors import LimitExceeded
from statelab.domain.shop import CartLimits
from statelab.state.cart import CartRef, SqlCarts, sweep_carts
from statelab.state.session import Lifetimes, SqlSessions, sweep_sessions

LIFE = Lifetimes(idle=100, absolute=1000)


class Clock:
    """Wall time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


Engines = Callable[[], AsyncEngine]


@pytest.fixture
async def engines(sql_url: str) -> AsyncIterator[Engines]:
    """Makes an engine of its own (a pool of connections): one per replica."""
    made: list[AsyncEngine] = []

    def new() -> AsyncEngine:
        made.append(make_engine(sql_url))
        return made[-1]

    yield new
    for engine in made:
        await engine.dispose()


async def _user(engine: AsyncEngine, name: str) -> int:
    async with sessionmaker(engine)() as session, session.begin():
        user = models.User(username=name, password_hash="-")
        session.add(user)
        await session.flush()
        return user.id


async def _rows(engine: AsyncEngine, table: type[models.Base]) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


# ------------------------------------------------------------------------ sessions


async def test_sessions_resolve_on_any_replica_and_end_everywhere(engines: Engines) -> None:
    one, two = SqlSessions(engines(), LIFE), SqlSessions(engines(), LIFE)
    db = engines()
    uid = await _user(db, "sam")
    phone = await one.issue(uid, "sam", "phone")
    laptop = await two.issue(uid, "sam", "laptop")
    seen = await two.resolve(phone.credential)
    assert seen is not None and (seen.user_id, seen.user_agent) == (uid, "phone")
    assert seen.csrf_token == phone.session.csrf_token
    devices = await one.list_for_user(uid)
    assert [s.user_agent for s in devices] == ["phone", "laptop"]

    await one.revoke(phone.session)
    assert await two.resolve(phone.credential) is None
    assert await one.revoke_all(uid) == 1  # the laptop; the phone had ended already
    assert await one.resolve(laptop.credential) is None
    assert await two.list_for_user(uid) == []


async def test_idle_timeout_is_renewed_by_use_and_capped_by_the_absolute_lifetime(
    engines: Engines,
) -> None:
    clock = Clock()
    sessions = SqlSessions(engines(), Lifetimes(idle=100, absolute=250), clock=clock)
    uid = await _user(engines(), "ida")
    issued = await sessions.issue(uid, "ida", "")
    clock.offset = 90
    assert await sessions.resolve(issued.credential) is not None  # renews: idle to t+190
    clock.offset = 180
    assert await sessions.resolve(issued.credential) is not None  # renews: capped at t+250
    clock.offset = 249
    assert await sessions.resolve(issued.credential) is not None
    clock.offset = 251
    assert await sessions.resolve(issued.credential) is None  # absolute lifetime over

    other = await sessions.issue(uid, "ida", "")
    clock.offset = 251 + 101  # unused for longer than the idle timeout
    assert await sessions.resolve(other.credential) is None
    assert await sessions.list_for_user(uid) == []


async def test_logout_all_counts_live_sessions_only(engines: Engines) -> None:
    clock = Clock()
    sessions = SqlSessions(engines(), LIFE, clock=clock)
    uid = await _user(engines(), "lou")
    await sessions.issue(uid, "lou", "old")
    clock.offset = 150  # the first one went idle
    await sessions.issue(uid, "lou", "new")
    clock.offset = 151
    assert await sessions.revoke_all(uid) == 1


async def test_the_sweep_deletes_expired_sessions_only(engines: Engines) -> None:
    db = engines()
    clock = Clock()
    sessions = SqlSessions(db, LIFE, clock=clock)
    uid = await _user(db, "sue")
    old = await sessions.issue(uid, "sue", "")
    clock.offset = 150
    kept = await sessions.issue(uid, "sue", "")
    assert await sweep_sessions(db, clock()) == 1
    assert await _rows(db, models.LoginSession) == 1
    assert await sessions.resolve(kept.credential) is not None
    assert await sessions.resolve(old.credential) is None


@pytest.mark.parametrize("credential", ["", "x" * 65, "short", "a b c d e f g h i j", "é" * 20])
async def test_a_credential_that_is_no_session_id_is_refused(
    engines: Engines, credential: str
) -> None:
    assert await SqlSessions(engines(), LIFE).resolve(credential) is None


# --------------------------------------------------------------------------- carts

LIMITS = CartLimits(max_lines=5, max_quantity=50)


def _carts(db: AsyncEngine, clock: Clock | None = None) -> SqlCarts:
    return SqlCarts(db, LIMITS, ttl=3600, clock=clock or Clock())


async def test_forty_concurrent_adds_through_two_replicas_give_the_exact_total(
    engines: Engines,
) -> None:
    replicas = [_carts(engines()), _carts(engines())]
    ref = CartRef("u:1")
    await asyncio.gather(*(replicas[i % 2].add(ref, {7: 1}) for i in range(40)))
    assert await replicas[0].get(ref) == {7: 40}


async def test_concurrent_adds_never_pass_the_limits(engines: Engines) -> None:
    replicas = [_carts(engines()), _carts(engines())]
    ref = CartRef("u:2")

    async def add(i: int, lines: dict[int, int]) -> bool:
        try:
            await replicas[i % 2].add(ref, lines)
        except LimitExceeded:
            return False
        return True

    # Twelve different items for five lines: exactly five get in.
    added = await asyncio.gather(*(add(i, {100 + i: 1}) for i in range(12)))
    assert sum(added) == 5
    assert len(await replicas[0].get(ref)) == 5
    # One line to its maximum of 50 by 9s: five adds fit (45), the others are refused.
    line = next(iter(await replicas[1].get(ref)))
    grown = await asyncio.gather(*(add(i, {line: 9}) for i in range(8)))
    assert sum(grown) == 5
    assert (await replicas[0].get(ref))[line] == 1 + 45


async def test_a_refused_change_changes_nothing(engines: Engines) -> None:
    carts = _carts(engines())
    ref = CartRef("a:visitor1234567890abcd")
    assert await carts.add(ref, {1: 2, 2: 3}) == {1: 2, 2: 3}
    with pytest.raises(LimitExceeded, match="quantity"):
        await carts.add(ref, {3: 1, 1: 49})  # the second line overflows: the first is undone
    with pytest.raises(LimitExceeded, match="different items"):
        await carts.add(ref, {4: 1, 5: 1, 6: 1, 7: 1})
    with pytest.raises(LimitExceeded):
        await carts.set(ref, 1, 51)
    assert await carts.get(ref) == {1: 2, 2: 3}
    assert await carts.set(ref, 1, 7) == {1: 7, 2: 3}
    assert await carts.set(ref, 2, 0) == {1: 7}
    assert await carts.set(ref, 1, 0) == {}
    assert await _rows(engines(), models.Cart) == 0  # an emptied cart is not kept


async def test_a_cart_expires_after_its_last_change_and_is_swept(engines: Engines) -> None:
    db, clock = engines(), Clock()
    carts = SqlCarts(db, LIMITS, ttl=100, clock=clock)
    old, kept = CartRef("u:3"), CartRef("u:4")
    await carts.add(old, {1: 1, 2: 1})
    clock.offset = 60
    await carts.add(kept, {1: 1})
    clock.offset = 90
    await carts.add(kept, {1: 1})  # a change renews the cart
    clock.offset = 101
    assert await carts.get(old) == {}
    assert await carts.get(kept) == {1: 2}
    assert await sweep_carts(db, clock()) == 1
    assert await _rows(db, models.CartLine) == 1  # the expired cart's lines went with it
    # An expired cart that was not swept yet starts empty again on the next add.
    clock.offset = 300
    assert await carts.add(kept, {9: 1}) == {9: 1}


async def test_any_owner_string_is_stored(engines: Engines) -> None:
    """An anonymous id comes from a cookie: whatever it holds, it fits the table."""
    carts = _carts(engines())
    for owner in ("a:" + "x" * 500, "a:spaces and ; semicolons", "a:émoji-🍕"):
        ref = CartRef(owner)
        assert await carts.add(ref, {1: 1}) == {1: 1}
        assert await carts.get(ref) == {1: 1}
    assert await carts.get(CartRef("a:" + "x" * 499)) == {}


async def test_the_cart_row_lock_serialises_changes(engines: Engines, sql_url: str) -> None:
    """While one transaction holds a cart, another change of it waits (PostgreSQL:
    the row lock; SQLite: the database's one write lock)."""
    db = engines()
    carts = _carts(engines())
    ref = CartRef("u:5")
    await carts.add(ref, {1: 1})
    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE carts SET expires_at = expires_at WHERE owner = :o"), {"o": "u:5"}
        )
        waiting = asyncio.create_task(carts.add(ref, {1: 1}))
        await asyncio.sleep(0.5)
        assert not waiting.done()
    assert await asyncio.wait_for(waiting, 10) == {1: 2}
