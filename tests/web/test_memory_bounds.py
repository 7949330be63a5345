"""What a replica keeps in memory is bounded: carts, sessions and rate-limit windows
expire and have a ceiling, and a flood of anonymous visitors never pushes out a
logged-in user's cart or live session."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from statelab.config import build_settings
from statelab.domain.errors import RateLimited, Unavailable
from statelab.domain.shop import CartLimits
from statelab.state.cart import CartRef, MemoryCarts
from statelab.state.ratelimit import MemoryRateLimiter
from statelab.state.session import Lifetimes, MemorySessions
from statelab.web.app import create_app
from tests.support import register_and_login, unique
from tests.web.conftest import SECRET

LIMITS = CartLimits(max_lines=30, max_quantity=50)


class Clock:
    """Time that moves only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def ref(owner: str) -> CartRef:
    return CartRef(owner=owner)


# ------------------------------------------------------------------------ carts


async def test_carts_expire_after_their_last_change() -> None:
    clock = Clock()
    carts = MemoryCarts(LIMITS, ttl=60, max_carts=100, clock=clock)
    await carts.add(ref("a:old"), {1: 1})
    clock.now += 30
    await carts.add(ref("u:7"), {2: 1})
    clock.now += 31  # the anonymous cart is 61 s old, the user's 31 s
    assert await carts.get(ref("a:old")) == {}
    assert await carts.get(ref("u:7")) == {2: 1}
    clock.now += 60
    await carts.add(ref("a:new"), {3: 1})  # a write sweeps what expired meanwhile
    assert len(carts) == 1


async def test_a_flood_of_anonymous_carts_stays_bounded_and_spares_users() -> None:
    clock = Clock()
    carts = MemoryCarts(LIMITS, ttl=3600, max_carts=3, clock=clock)
    await carts.add(ref("u:1"), {1: 2})
    for n in range(50):
        clock.now += 1
        await carts.add(ref(f"a:{n}"), {1: 1})
        assert len(carts) <= 3
    assert await carts.get(ref("u:1")) == {1: 2}
    assert await carts.get(ref("a:49")) == {1: 1}  # the newest anonymous carts stay
    assert await carts.get(ref("a:0")) == {}


async def test_only_a_user_makes_room_among_users() -> None:
    clock = Clock()
    carts = MemoryCarts(LIMITS, ttl=3600, max_carts=2, clock=clock)
    await carts.add(ref("u:1"), {1: 1})
    clock.now += 1
    await carts.add(ref("u:2"), {1: 1})
    with pytest.raises(Unavailable) as refused:
        await carts.add(ref("a:flood"), {1: 1})
    assert refused.value.retry_after > 3000  # until the oldest user's cart expires
    assert len(carts) == 2 and await carts.get(ref("u:1")) == {1: 1}
    await carts.add(ref("u:3"), {1: 1})  # another user: the least recently changed goes
    assert await carts.get(ref("u:1")) == {}
    assert await carts.get(ref("u:2")) == await carts.get(ref("u:3")) == {1: 1}


async def test_an_emptied_cart_is_not_kept() -> None:
    carts = MemoryCarts(LIMITS, ttl=60, max_carts=10)
    await carts.add(ref("a:x"), {4: 1})
    await carts.set(ref("a:x"), 4, 0)
    assert len(carts) == 0


# --------------------------------------------------------------------- sessions

LIFE = Lifetimes(idle=600, absolute=3600)


async def test_idle_sessions_are_swept_without_being_looked_up() -> None:
    clock = Clock(time.time())
    sessions = MemorySessions(LIFE, max_sessions=100, per_user=10, clock=clock)
    for user in range(20):
        await sessions.issue(user, f"u{user}", "test")
    clock.now += 601
    await sessions.issue(99, "late", "test")
    assert len(sessions) == 1


async def test_one_user_cannot_fill_the_replica() -> None:
    clock = Clock(time.time())
    sessions = MemorySessions(LIFE, max_sessions=100, per_user=3, clock=clock)
    issued = []
    for _ in range(10):
        clock.now += 1
        issued.append(await sessions.issue(1, "alice", "test"))
    assert len(sessions) == 3
    live = [s.sid for s in await sessions.list_for_user(1)]
    assert live == [i.session.sid for i in issued[-3:]]  # the least recently used ended


async def test_a_full_replica_refuses_a_login_rather_than_end_a_live_session() -> None:
    clock = Clock(time.time())
    sessions = MemorySessions(LIFE, max_sessions=3, per_user=3, clock=clock)
    first = [await sessions.issue(user, f"u{user}", "test") for user in range(3)]
    with pytest.raises(Unavailable) as refused:
        await sessions.issue(4, "late", "test")
    assert 0 < refused.value.retry_after <= 601
    for issued in first:
        assert await sessions.resolve(issued.credential) == issued.session
    await sessions.revoke(first[0].session)
    assert (await sessions.issue(4, "late", "test")).session.user_id == 4


async def test_listing_devices_renews_nobody() -> None:
    clock = Clock(time.time())
    sessions = MemorySessions(LIFE, max_sessions=10, per_user=10, clock=clock)
    phone = await sessions.issue(1, "alice", "phone")
    laptop = await sessions.issue(1, "alice", "laptop")
    clock.now += 500
    assert len(await sessions.list_for_user(1)) == 2
    assert await sessions.resolve(laptop.credential) is not None
    clock.now += 200  # the phone was idle 700 s: listing did not count as its use
    assert [s.sid for s in await sessions.list_for_user(1)] == [laptop.session.sid]
    assert await sessions.resolve(phone.credential) is None


# ---------------------------------------------------------------- rate limits


async def test_rate_windows_are_bounded_and_finished_ones_go_first() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(max_windows=3, clock=clock)
    await limiter.hit("register", "10.0.0.1", limit=1, window=3600)
    with pytest.raises(RateLimited):
        await limiter.hit("register", "10.0.0.1", limit=1, window=3600)
    for n in range(2, 40):  # a flood of short windows, each finished before the next
        clock.now += 61
        await limiter.hit("login", f"10.0.0.{n}", limit=5, window=60)
        assert len(limiter) <= 3
    with pytest.raises(RateLimited):  # the long window survived the flood
        await limiter.hit("register", "10.0.0.1", limit=1, window=3600)
    for n in range(40, 50):  # live windows only: the one nearest its end goes
        await limiter.hit("login", f"10.0.0.{n}", limit=5, window=60)
        assert len(limiter) == 3


# ------------------------------------------------------------ through a replica


@pytest.fixture
async def stateful(tmp_path: Path, sqlite_url: str) -> AsyncIterator[tuple[FastAPI, Any]]:
    """A stateful replica holding at most 5 carts, and a way to make its clients."""
    settings = build_settings(
        profile="stateful",
        database_url=sqlite_url,
        data_dir=tmp_path,
        secret_key=SECRET,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        max_memory_carts=5,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):

        def client() -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app)
            return httpx.AsyncClient(transport=transport, base_url="http://testserver")

        yield app, client


async def test_a_replica_flooded_by_visitors_keeps_its_users_carts(
    stateful: tuple[FastAPI, Any],
) -> None:
    app, new_client = stateful
    async with new_client() as alice:
        headers = await register_and_login(alice, unique("alice"))
        r = await alice.post("/api/cart/items", json={"item_id": 1, "quantity": 3}, headers=headers)
        assert r.status_code == 200, r.text
        for _ in range(20):
            async with new_client() as visitor:
                r = await visitor.post("/api/cart/items", json={"item_id": 2, "quantity": 1})
                assert r.status_code == 200, r.text
        assert len(app.state.stores.carts) == 5
        cart = (await alice.get("/api/cart")).json()
        assert [(line["item_id"], line["quantity"]) for line in cart["items"]] == [(1, 3)]
