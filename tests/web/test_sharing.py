"""Two replicas of one deployment: shared placements agree, memory placements do not."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import register_and_login, share_login
from tests.web.conftest import ShopFactory


@pytest.mark.parametrize("profile", ["stateless", "token"])
async def test_shared_stores_serve_from_any_replica(shop: ShopFactory, profile: str) -> None:
    r1 = await shop(profile, replica_id="r1")
    r2 = await shop(profile, replica_id="r2")
    headers = await register_and_login(r1)
    await r1.post("/api/cart/items", json={"item_id": 2, "quantity": 2}, headers=headers)
    await r1.post(
        "/api/account/top-up",
        json={"amount_cents": 5000},
        headers={**headers, "Idempotency-Key": "t"},
    )
    share_login(r1, r2)  # the load balancer sends the next request elsewhere
    me = await r2.get("/api/auth/me", headers=headers)
    assert me.status_code == 200
    assert me.headers["X-Served-By"] == "r2"
    cart = (await r2.get("/api/cart", headers=headers)).json()
    assert cart["items"][0]["quantity"] == 2
    assert (await r2.get("/api/account", headers=headers)).json() == {"balance_cents": 5000}
    paid = await r2.post(
        "/api/checkout",
        json={"expected_total_cents": 1500},
        headers={**headers, "Idempotency-Key": "c"},
    )
    assert paid.status_code == 201
    assert (await r1.get("/api/orders", headers=headers)).json()["orders"][0]["id"] == paid.json()[
        "id"
    ]


async def test_memory_placements_live_in_one_replica(shop: ShopFactory) -> None:
    r1 = await shop("stateful", replica_id="r1")
    r2 = await shop("stateful", replica_id="r2")
    headers = await register_and_login(r1)
    await r1.post("/api/cart/items", json={"item_id": 2, "quantity": 2}, headers=headers)
    share_login(r1, r2)
    assert (await r2.get("/api/auth/me", headers=headers)).status_code == 401
    # Logging in again on r2 works (accounts are in SQL) but the cart stayed on r1.
    headers2 = await register_and_login(r2)
    assert (await r2.get("/api/cart", headers=headers2)).json()["items"] == []
    # The stateful ATM: each replica has its own balance for the same account.
    await r1.post(
        "/api/account/top-up",
        json={"amount_cents": 1000},
        headers={**headers, "Idempotency-Key": "a"},
    )
    assert (await r1.get("/api/account", headers=headers)).json() == {"balance_cents": 1000}
    assert (await r2.get("/api/account", headers=headers2)).json() == {"balance_cents": 0}


async def test_concurrent_cart_adds_through_two_replicas_lose_nothing(shop: ShopFactory) -> None:
    """A GET+SET session blob loses most of these; atomic Redis scripts lose none."""
    r1 = await shop("stateless", replica_id="r1", max_line_quantity=1000)
    r2 = await shop("stateless", replica_id="r2", max_line_quantity=1000)
    headers = await register_and_login(r1)
    share_login(r1, r2)

    async def add(client_index: int) -> int:
        client = (r1, r2)[client_index % 2]
        r = await client.post(
            "/api/cart/items", json={"item_id": 1, "quantity": 1}, headers=headers
        )
        return r.status_code

    statuses = await asyncio.gather(*(add(i) for i in range(200)))
    assert statuses == [200] * 200
    cart = (await r1.get("/api/cart", headers=headers)).json()
    assert cart["items"][0]["quantity"] == 200


async def test_memory_cart_is_exact_within_its_replica(shop: ShopFactory) -> None:
    r1 = await shop("stateful", max_line_quantity=1000)
    headers = await register_and_login(r1)
    results = await asyncio.gather(
        *(
            r1.post("/api/cart/items", json={"item_id": 5, "quantity": 1}, headers=headers)
            for _ in range(100)
        )
    )
    assert {r.status_code for r in results} == {200}
    assert (await r1.get("/api/cart", headers=headers)).json()["items"][0]["quantity"] == 100
