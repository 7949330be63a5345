"""The request path: what a cart read costs the stores, and that reading ahead never
shows anybody a cart that is not theirs."""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Iterator

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

import redis
from statelab.db.engine import StatementCount
from statelab.state import keys
from tests.support import register_and_login
from tests.web.conftest import ShopFactory


def _reads(client: redis.Redis) -> int:
    """How many times the Redis server has read from its clients' sockets."""
    return int(client.info("stats")["total_reads_processed"])


@pytest.mark.parametrize(
    "profile, place",
    [
        ("stateless", {}),  # session, cart and menu in Redis
        ("token", {}),  # the JWT deny-list and the menu in Redis, the cart a cookie
        ("stateful", {"cart": "redis", "cache": "redis"}),
    ],
)
async def test_a_cart_read_is_one_redis_round_trip(
    shop: ShopFactory, redis_url: str, profile: str, place: dict[str, str]
) -> None:
    client = await shop(profile, place=place)
    headers = await register_and_login(client)
    for item in (1, 10):
        await client.post("/api/cart/items", json={"item_id": item}, headers=headers)
    await client.get("/api/cart", headers=headers)  # the menu is in Redis by now
    with redis.Redis.from_url(redis_url) as counter:
        before = _reads(counter)
        for _ in range(20):
            r = await client.get("/api/cart", headers=headers)
            assert [line["item_id"] for line in r.json()["items"]] == [1, 10]
        # One socket read per request (its commands came in one write), one for the
        # INFO asking; a round trip per store would make it 40 or 60.
        assert _reads(counter) - before <= 20 + 2


async def test_a_cart_read_with_sessions_and_carts_in_sql_is_one_query(
    shop: ShopFactory, sql_url: str
) -> None:
    place = {"session": "db", "cart": "db", "cache": "memory"}
    client = await shop("stateless", place=place, database_url=sql_url)
    headers = await register_and_login(client)
    for item in (1, 10):
        await client.post("/api/cart/items", json={"item_id": item}, headers=headers)
    await client.get("/api/cart", headers=headers)  # the menu is in memory by now
    statements = StatementCount(client._transport.app.state.stores.engine)  # type: ignore[attr-defined]
    for _ in range(10):
        r = await client.get("/api/cart", headers=headers)
        assert [line["item_id"] for line in r.json()["items"]] == [1, 10]
    assert statements.value == 10


PLACES = [
    {"session": session, "cart": cart}
    for session, cart in [("redis", "redis"), ("memory", "memory"), ("db", "db"), ("db", "redis")]
]


@pytest.mark.parametrize("place", PLACES, ids=lambda p: f"session={p['session']},cart={p['cart']}")
async def test_a_session_id_naming_another_user_shows_the_visitors_own_cart(
    shop: ShopFactory, place: dict[str, str]
) -> None:
    """The cart of the user a session id names is read with the session; when the id
    proves nobody, that read is dropped and the visitor's own cart answered."""
    alice = await shop("stateless", place=place)
    headers = await register_and_login(alice)
    await alice.post("/api/cart/items", json={"item_id": 1}, headers=headers)
    alice_id = (await alice.get("/api/auth/me")).json()["user_id"]

    mallory = await shop.device(alice)
    r = await mallory.post("/api/cart/items", json={"item_id": 10})  # anonymous
    assert [line["item_id"] for line in r.json()["items"]] == [10]
    mallory.cookies.set("statelab_session", f"{alice_id}.made-up-but-well-formed")
    r = await mallory.get("/api/cart")
    assert r.status_code == 200
    assert [line["item_id"] for line in r.json()["items"]] == [10]

    stranger = await shop.device(alice)
    stranger.cookies.set("statelab_session", f"{alice_id}.made-up-but-well-formed")
    assert (await stranger.get("/api/cart")).json() == {"items": [], "total_cents": 0}


@pytest.mark.parametrize(
    "cookie",
    [
        b"statelab_session=" + b"7" * 4400 + b".x",  # more digits than int() takes
        b"statelab_session=\xb2.x",  # a superscript two: isdigit(), yet no int
    ],
    ids=["many-digits", "superscript-digit"],
)
async def test_a_session_id_that_is_no_id_is_nobody(shop: ShopFactory, cookie: bytes) -> None:
    client = await shop("stateless")
    headers = [(b"cookie", cookie)]
    cart = await client.get("/api/cart", headers=headers)
    assert (cart.status_code, cart.json()) == (200, {"items": [], "total_cents": 0})
    me = await client.get("/api/auth/me", headers=headers)
    assert me.status_code == 401
    assert me.headers["content-type"] == "application/problem+json"


def _calls(dependant: Dependant) -> Iterator[object]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


async def test_no_route_has_a_synchronous_dependency(shop: ShopFactory) -> None:
    """FastAPI runs a synchronous dependency in its thread pool: ~150 µs a request."""
    client = await shop("stateless")
    app = client._transport.app  # type: ignore[attr-defined]
    routes = [r for r in iter_route_contexts(app.routes) if isinstance(r.original_route, APIRoute)]
    assert len(routes) > 30
    sync = {
        f"{route.path_format} -> {getattr(call, '__name__', call)}"
        for route in routes
        for call in _calls(route.dependant)
        if not inspect.iscoroutinefunction(call)
    }
    assert sync == set()
    assert isinstance(client, httpx.AsyncClient)


@pytest.mark.parametrize("cache", ["redis", "memory"])
async def test_requests_that_miss_the_menu_together_read_sql_once(
    shop: ShopFactory, redis_url: str, cache: str
) -> None:
    """When the shared copy expires, every request in flight misses it at once: they
    share one SQL read (and take no write lock for it)."""
    client = await shop("stateless", place={"cache": cache})
    stores = client._transport.app.state.stores  # type: ignore[attr-defined]
    await client.get("/api/menu")
    if cache == "redis":
        with redis.Redis.from_url(redis_url) as admin:
            assert admin.delete(keys.menu()) == 1  # as if its TTL ran out
    else:
        stores.menu._loaded_at = -math.inf  # the copy's TTL ran out
    statements = StatementCount(stores.engine)
    answers = await asyncio.gather(*(client.get("/api/menu") for _ in range(20)))
    assert {r.status_code for r in answers} == {200}
    assert statements.value == 1
