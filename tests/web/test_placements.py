"""The placement contract: every placement of a kind answers the same API the same way."""

from __future__ import annotations

import httpx
import pytest

from tests.support import register_and_login
from tests.web.conftest import ShopFactory

SESSION = [{"place": {"session": p}} for p in ("memory", "redis", "jwt", "db")]
CART = [{"place": {"cart": p}} for p in ("memory", "redis", "client", "db")]
LEDGER = [{"place": {"ledger": p}} for p in ("memory", "db", "replicated")]


def _id(param: dict[str, dict[str, str]]) -> str:
    return ",".join(f"{k}={v}" for k, v in param["place"].items())


@pytest.mark.parametrize("overrides", SESSION, ids=_id)
async def test_session_contract(shop: ShopFactory, overrides: dict[str, object]) -> None:
    client = await shop(**overrides)
    assert (await client.get("/api/auth/me")).status_code == 401
    headers = await register_and_login(client)
    me = await client.get("/api/auth/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["username"] == "alice"
    devices = (await client.get("/api/auth/sessions", headers=headers)).json()["sessions"]
    assert [d["current"] for d in devices] == [True]
    assert (await client.post("/api/auth/logout", headers=headers)).status_code == 204
    assert (await client.get("/api/auth/me", headers=headers)).status_code == 401


@pytest.mark.parametrize("overrides", SESSION, ids=_id)
async def test_logout_all_ends_every_device(
    shop: ShopFactory, overrides: dict[str, object]
) -> None:
    phone = await shop(**overrides)
    laptop = await shop.device(phone)
    phone_headers = await register_and_login(phone)
    laptop_headers = await register_and_login(laptop)
    devices = (await laptop.get("/api/auth/sessions", headers=laptop_headers)).json()["sessions"]
    assert sorted(d["current"] for d in devices) == [False, True]
    r = await laptop.post("/api/auth/logout-all", headers=laptop_headers)
    assert r.status_code == 200
    assert r.json()["revoked"] == 2
    assert (await laptop.get("/api/auth/me", headers=laptop_headers)).status_code == 401
    assert (await phone.get("/api/auth/me", headers=phone_headers)).status_code == 401


@pytest.mark.parametrize("overrides", CART, ids=_id)
async def test_cart_contract(shop: ShopFactory, overrides: dict[str, object]) -> None:
    client = await shop(**overrides, max_cart_lines=3, max_line_quantity=5)
    headers = await register_and_login(client)
    empty = await client.get("/api/cart", headers=headers)
    assert empty.json() == {"items": [], "total_cents": 0}

    r = await client.post("/api/cart/items", json={"item_id": 1, "quantity": 2}, headers=headers)
    assert r.status_code == 200
    r = await client.post("/api/cart/items", json={"item_id": 1, "quantity": 1}, headers=headers)
    assert r.json() == {
        "items": [{"item_id": 1, "name": "Margherita", "quantity": 3, "price_cents": 900}],
        "total_cents": 2700,
    }
    r = await client.patch("/api/cart/items/1", json={"quantity": 1}, headers=headers)
    assert r.json()["total_cents"] == 900
    await client.post("/api/cart/items", json={"item_id": 10, "quantity": 2}, headers=headers)
    r = await client.delete("/api/cart/items/1", headers=headers)
    assert [line["item_id"] for line in r.json()["items"]] == [10]
    assert (await client.get("/api/cart", headers=headers)).json()["total_cents"] == 700


@pytest.mark.parametrize("overrides", CART, ids=_id)
async def test_cart_limits_refuse_without_change(
    shop: ShopFactory, overrides: dict[str, object]
) -> None:
    client = await shop(**overrides, max_cart_lines=2, max_line_quantity=5)
    headers = await register_and_login(client)
    for item in (1, 2):
        await client.post("/api/cart/items", json={"item_id": item, "quantity": 1}, headers=headers)
    before = (await client.get("/api/cart", headers=headers)).json()
    refusals = [
        await client.post("/api/cart/items", json={"item_id": 3, "quantity": 1}, headers=headers),
        await client.post("/api/cart/items", json={"item_id": 1, "quantity": 5}, headers=headers),
        await client.post("/api/cart/items", json={"item_id": 1, "quantity": 0}, headers=headers),
        await client.patch("/api/cart/items/2", json={"quantity": -1}, headers=headers),
        await client.post("/api/cart/items", json={"item_id": 999, "quantity": 1}, headers=headers),
    ]
    assert [r.status_code for r in refusals] == [422] * 5
    assert all(r.headers["content-type"] == "application/problem+json" for r in refusals)
    assert (
        await client.patch("/api/cart/items/999", json={"quantity": 1}, headers=headers)
    ).status_code == 404
    assert (await client.get("/api/cart", headers=headers)).json() == before


@pytest.mark.parametrize("overrides", CART, ids=_id)
async def test_anonymous_cart_merges_at_login(
    shop: ShopFactory, overrides: dict[str, object]
) -> None:
    client = await shop(**overrides)
    await client.post("/api/auth/register", json={"username": "bob", "password": "pw-for-bob-1"})
    r = await client.post("/api/cart/items", json={"item_id": 20, "quantity": 1})
    assert r.status_code == 200
    csrf = r.headers["X-CSRF-Token"]
    r = await client.post(
        "/api/cart/items", json={"item_id": 21, "quantity": 2}, headers={"X-CSRF-Token": csrf}
    )
    assert r.json()["total_cents"] == 550 + 1000
    r = await client.post("/api/auth/login", json={"username": "bob", "password": "pw-for-bob-1"})
    assert r.status_code == 200
    cart = (await client.get("/api/cart")).json()
    assert {(i["item_id"], i["quantity"]) for i in cart["items"]} == {(20, 1), (21, 2)}


@pytest.mark.parametrize("overrides", LEDGER, ids=_id)
async def test_ledger_contract(shop: ShopFactory, overrides: dict[str, object]) -> None:
    client = await shop(**overrides)
    headers = await register_and_login(client)

    async def money(path: str, key: str, **body: int) -> httpx.Response:
        return await client.post(path, json=body, headers={**headers, "Idempotency-Key": key})

    assert (await client.get("/api/account", headers=headers)).json() == {"balance_cents": 0}
    assert (await money("/api/account/top-up", "t1", amount_cents=3000)).json() == {
        "balance_cents": 3000
    }
    refused = await money("/api/account/withdraw", "w1", amount_cents=3001)
    assert refused.status_code == 409
    assert (await client.get("/api/account", headers=headers)).json() == {"balance_cents": 3000}
    assert (await money("/api/account/withdraw", "w2", amount_cents=1000)).json() == {
        "balance_cents": 2000
    }
    for bad in (0, -5, 10**12):
        assert (
            await money("/api/account/top-up", f"bad{bad}", amount_cents=bad)
        ).status_code == 422

    await client.post("/api/cart/items", json={"item_id": 4, "quantity": 1}, headers=headers)
    paid = await client.post(
        "/api/checkout",
        json={"expected_total_cents": 1100},
        headers={**headers, "Idempotency-Key": "c1"},
    )
    assert paid.status_code == 201
    order = paid.json()
    assert order["total_cents"] == 1100
    assert order["balance_cents"] == 900
    assert order["receipt"] is None
    assert (await client.get("/api/cart", headers=headers)).json()["items"] == []
    listed = (await client.get("/api/orders", headers=headers)).json()["orders"]
    assert [o["id"] for o in listed] == [order["id"]]
    one = await client.get(f"/api/orders/{order['id']}", headers=headers)
    assert one.json()["items"][0]["name"] == "Diavola"


@pytest.mark.parametrize("overrides", LEDGER, ids=_id)
async def test_idempotency_keys(shop: ShopFactory, overrides: dict[str, object]) -> None:
    client = await shop(**overrides)
    headers = await register_and_login(client)

    async def top_up(key: str | None, amount: int) -> httpx.Response:
        extra = {"Idempotency-Key": key} if key else {}
        return await client.post(
            "/api/account/top-up", json={"amount_cents": amount}, headers={**headers, **extra}
        )

    missing = await top_up(None, 100)
    assert missing.status_code == 400
    first, again = await top_up("k", 100), await top_up("k", 100)
    assert first.json() == again.json() == {"balance_cents": 100}
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await top_up("k", 200)).status_code == 422
    assert (await client.get("/api/account", headers=headers)).json() == {"balance_cents": 100}
    assert (await top_up("k2", 200)).json() == {"balance_cents": 300}

    async def checkout(expected: int) -> httpx.Response:
        return await client.post(
            "/api/checkout",
            json={"expected_total_cents": expected},
            headers={**headers, "Idempotency-Key": "e"},
        )

    empty = await checkout(250)
    assert empty.status_code == 409
    await client.post("/api/cart/items", json={"item_id": 11, "quantity": 1}, headers=headers)
    paid = await checkout(250)
    assert paid.status_code == 201, "an empty-cart refusal must not use up the key"
    replay = await checkout(250)
    assert replay.status_code == 201
    assert replay.json() == paid.json()
    assert (await client.get("/api/account", headers=headers)).json() == {"balance_cents": 50}
    assert len((await client.get("/api/orders", headers=headers)).json()["orders"]) == 1
