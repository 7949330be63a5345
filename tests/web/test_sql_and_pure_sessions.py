"""``session=db``, ``cart=db`` and ``session=jwt-pure`` through replicas of one
deployment: SQL sessions and carts shared by every replica (on SQLite and
PostgreSQL), and pure tokens that no store is asked about — nor can revoke."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import jwt
import pytest

from statelab.config import ConfigError, build_settings
from statelab.keyring import derive
from tests.support import register_and_login, share_login
from tests.web.conftest import SECRET, Shop

SQL_STATE = {"session": "db", "cart": "db"}


@pytest.fixture
async def sql_shop(sql_url: str, tmp_path: Path, redis_url: str) -> AsyncIterator[Shop]:
    """Replicas over SQLite or PostgreSQL."""
    base = {
        "redis_url": redis_url,
        "database_url": sql_url,
        "secret_key": SECRET,
        "data_dir": tmp_path / "data",
        "argon2_time_cost": 1,
        "argon2_memory_kib": 1024,
    }
    async with AsyncExitStack() as stack:
        yield Shop(stack, base)


async def test_a_sql_session_and_cart_are_the_same_on_every_replica(sql_shop: Shop) -> None:
    r1 = await sql_shop(place=SQL_STATE, replica_id="r1")
    r2 = await sql_shop(place=SQL_STATE, replica_id="r2")
    headers = await register_and_login(r1)
    r = await r1.post("/api/cart/items", json={"item_id": 1, "quantity": 2}, headers=headers)
    assert r.status_code == 200
    share_login(r1, r2)
    me = await r2.get("/api/auth/me")
    assert me.status_code == 200 and me.json()["placement"] == "db"
    assert (await r2.get("/api/cart")).json()["items"][0]["quantity"] == 2

    laptop = await sql_shop.device(r2)
    await register_and_login(laptop)
    devices = (await r2.get("/api/auth/sessions")).json()["sessions"]
    assert sorted(d["current"] for d in devices) == [False, True]
    out = await r2.post("/api/auth/logout-all", headers=headers)
    assert out.json() == {"revoked": 2, "immediate": True, "valid_for_up_to_seconds": 0}
    assert (await r1.get("/api/auth/me")).status_code == 401
    assert (await laptop.get("/api/auth/me")).status_code == 401


async def test_forty_concurrent_adds_through_two_replicas_give_the_exact_total(
    sql_shop: Shop,
) -> None:
    r1 = await sql_shop(place=SQL_STATE, replica_id="r1")
    r2 = await sql_shop(place=SQL_STATE, replica_id="r2")
    headers = await register_and_login(r1)
    share_login(r1, r2)

    async def add(client: httpx.AsyncClient) -> int:
        body = {"item_id": 3, "quantity": 1}
        return (await client.post("/api/cart/items", json=body, headers=headers)).status_code

    answers = await asyncio.gather(*(add((r1, r2)[i % 2]) for i in range(40)))
    assert answers == [200] * 40
    cart = (await r2.get("/api/cart")).json()
    assert [(line["item_id"], line["quantity"]) for line in cart["items"]] == [(3, 40)]


async def test_a_bad_session_cookie_is_no_session(sql_shop: Shop) -> None:
    client = await sql_shop(place=SQL_STATE)
    for value in (b"x" * 300, b"1.abc", b"%00%01", "é".encode(), b"1.\x01\x7f"):
        cookie = [(b"cookie", b"statelab_session=" + value + b"; statelab_anon=" + value)]
        assert (await client.get("/api/auth/me", headers=cookie)).status_code == 401
        assert (await client.get("/api/cart", headers=cookie)).status_code == 200


# ------------------------------------------------------------------------ jwt-pure

PURE = {"session": "jwt-pure"}


def _store_calls(metrics: str) -> int:
    """The replica's store calls so far, all stores together."""
    found = re.findall(r"^statelab_store_calls_total\{[^}]*\} (\S+)$", metrics, re.M)
    assert found, "no store call counter exported"
    return sum(int(float(n)) for n in found)


async def test_a_pure_token_is_trusted_without_any_store_call(shop: Shop) -> None:
    client = await shop("token", place=PURE)
    headers = await register_and_login(client)
    await client.get("/api/auth/me", headers=headers)  # verified once (then remembered)
    before = _store_calls((await client.get("/metrics")).text)
    for _ in range(20):
        me = await client.get("/api/auth/me", headers=headers)
        assert me.status_code == 200
    assert _store_calls((await client.get("/metrics")).text) == before
    body = me.json()
    assert body["placement"] == "jwt-pure"
    assert 299 < body["expires_at"] - body["created_at"] <= 300  # jwt_pure_ttl_seconds


async def test_logout_all_cannot_stop_a_pure_token_and_says_so(shop: Shop) -> None:
    r1 = await shop("token", place=PURE, jwt_pure_ttl_seconds=120)
    r2 = await shop("token", place=PURE, jwt_pure_ttl_seconds=120, replica_id="r2")
    phone = await register_and_login(r1)
    laptop = await register_and_login(await shop.device(r2))
    devices = (await r2.get("/api/auth/sessions", headers=laptop)).json()["sessions"]
    assert [d["current"] for d in devices] == [True]  # only the caller's is known
    out = await r2.post("/api/auth/logout-all", headers=laptop)
    assert out.status_code == 200
    assert out.json() == {"revoked": 0, "immediate": False, "valid_for_up_to_seconds": 125}
    assert (await r1.get("/api/auth/me", headers=phone)).status_code == 200
    assert (await r2.get("/api/auth/me", headers=laptop)).status_code == 200
    assert (await r1.post("/api/auth/logout", headers=phone)).status_code == 204
    assert (await r1.get("/api/auth/me", headers=phone)).status_code == 200  # still valid


async def test_a_pure_token_ends_at_its_expiry(shop: Shop) -> None:
    client = await shop("token", place=PURE)
    headers = await register_and_login(client)
    claims = jwt.decode(
        headers["Authorization"].removeprefix("Bearer "),
        derive(SECRET, "jwt"),
        algorithms=["HS256"],
        audience="statelab-shop",
    )
    claims["exp"] = claims["iat"] - 60  # expired a minute ago (beyond the leeway)
    expired = jwt.encode(claims, derive(SECRET, "jwt"), headers={"kid": "k1"})
    me = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {expired}"})
    assert me.status_code == 401


async def test_pure_tokens_and_sql_state_need_no_redis(shop: Shop, tmp_path: Path) -> None:
    place = {"session": "jwt-pure", "cart": "db", "chat": "memory", "ratelimit": "memory"}
    place |= {"jobs": "inprocess", "cache": "memory"}
    client = await shop("token", place=place, redis_url=None)
    headers = await register_and_login(client)
    r = await client.post("/api/cart/items", json={"item_id": 2, "quantity": 1}, headers=headers)
    assert r.status_code == 200
    assert (await client.get("/api/auth/me", headers=headers)).status_code == 200
    with pytest.raises(ConfigError, match="--redis-url is required by session=jwt"):
        build_settings(profile="token", place={**place, "session": "jwt"}, data_dir=tmp_path)
