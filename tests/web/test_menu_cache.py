"""Prices: only admins change them; the cache placement decides when other replicas
show a change; checkout never charges a total the customer was not shown."""

from __future__ import annotations

import httpx
import pytest

from statelab.state.users import change_role
from tests.support import register_and_login
from tests.web.conftest import ShopFactory

PROBLEM = "application/problem+json"
PIZZA, OLD, NEW = 1, 900, 1000  # Margherita, as menu.json seeds it


async def _price(client: httpx.AsyncClient, item_id: int = PIZZA) -> int:
    items = (await client.get("/api/menu")).json()["items"]
    return next(int(i["price_cents"]) for i in items if i["id"] == item_id)


async def _set_price(
    client: httpx.AsyncClient, headers: dict[str, str], price: object, item_id: int = PIZZA
) -> httpx.Response:
    return await client.put(
        f"/api/admin/menu/{item_id}", json={"price_cents": price}, headers=headers
    )


async def _admin(database_url: str, client: httpx.AsyncClient, name: str) -> dict[str, str]:
    """Log in as ``name``, an admin (``statelab admin grant`` does the same)."""
    headers = await register_and_login(client, name)
    await change_role(database_url, name, admin=True)
    return headers


async def _checkout(
    client: httpx.AsyncClient, headers: dict[str, str], key: str, body: object
) -> httpx.Response:
    return await client.post(
        "/api/checkout", json=body, headers={**headers, "Idempotency-Key": key}
    )


@pytest.mark.parametrize("profile", ["stateful", "stateless", "token"])
async def test_only_admins_change_prices_and_a_revocation_holds_at_once(
    shop: ShopFactory, sqlite_url: str, profile: str
) -> None:
    client = await shop(profile)
    anonymous = await _set_price(await shop.device(client), {}, NEW)
    assert (anonymous.status_code, anonymous.headers["content-type"]) == (401, PROBLEM)
    headers = await register_and_login(client, "carol")
    refused = await _set_price(client, headers, NEW)
    assert (refused.status_code, refused.headers["content-type"]) == (403, PROBLEM)
    assert "admin role" in refused.json()["detail"]

    await change_role(sqlite_url, "carol", admin=True)  # no new login needed
    changed = await _set_price(client, headers, NEW)
    assert changed.status_code == 200, changed.text
    assert changed.json() == {
        "id": PIZZA,
        "name": "Margherita",
        "kind": "pizza",
        "price_cents": NEW,
    }
    assert await _price(client) == NEW

    await change_role(sqlite_url, "carol", admin=False)
    assert (await _set_price(client, headers, OLD)).status_code == 403
    assert await _price(client) == NEW


async def test_bad_prices_and_unknown_items_change_nothing(
    shop: ShopFactory, sqlite_url: str
) -> None:
    client = await shop("stateless")
    headers = await _admin(sqlite_url, client, "dave")
    for bad in (0, -1, 10_000_001, "950", 950.0, True, None):
        r = await _set_price(client, headers, bad)
        assert (r.status_code, r.headers["content-type"]) == (422, PROBLEM), bad
    missing = await _set_price(client, headers, NEW, item_id=999)
    assert (missing.status_code, missing.headers["content-type"]) == (404, PROBLEM)
    assert await _price(client) == OLD


async def test_a_shared_cache_shows_a_change_on_every_replica_at_once(
    shop: ShopFactory, sqlite_url: str
) -> None:
    r1 = await shop("stateless", replica_id="r1")
    r2 = await shop("stateless", replica_id="r2")
    buyer = await register_and_login(r2, "erin")
    await r2.post("/api/cart/items", json={"item_id": PIZZA, "quantity": 2}, headers=buyer)
    assert await _price(r2) == OLD  # r2 has read the shared copy
    assert (await _set_price(r1, await _admin(sqlite_url, r1, "frank"), NEW)).status_code == 200
    assert await _price(r2) == NEW
    cart = (await r2.get("/api/cart", headers=buyer)).json()
    assert (cart["items"][0]["price_cents"], cart["total_cents"]) == (NEW, 2 * NEW)


async def test_a_stale_cart_cannot_be_charged_at_a_price_it_did_not_show(
    shop: ShopFactory, sqlite_url: str
) -> None:
    """Replicas with their own copy (cache=memory, a TTL far beyond the test) show the
    old price after a change through another replica; checkout prices from SQL and
    refuses the old total, charging nothing, then charges the new one once shown."""
    r1 = await shop("stateful", replica_id="r1", cache_ttl_seconds=3600)
    r2 = await shop("stateful", replica_id="r2", cache_ttl_seconds=3600)
    buyer = await register_and_login(r2, "gina")
    top_up = {**buyer, "Idempotency-Key": "t"}
    await r2.post("/api/account/top-up", json={"amount_cents": 5000}, headers=top_up)
    await r2.post("/api/cart/items", json={"item_id": PIZZA, "quantity": 2}, headers=buyer)
    assert (await _set_price(r1, await _admin(sqlite_url, r1, "hank"), NEW)).status_code == 200
    assert await _price(r1) == NEW
    assert await _price(r2) == OLD, "r2 serves its own, stale copy"
    shown = (await r2.get("/api/cart", headers=buyer)).json()
    assert shown["total_cents"] == 2 * OLD

    refused = await _checkout(r2, buyer, "c1", {"expected_total_cents": shown["total_cents"]})
    assert (refused.status_code, refused.headers["content-type"]) == (409, PROBLEM)
    problem = refused.json()
    assert problem["title"] == "Price changed"
    assert str(2 * NEW) in problem["detail"] and str(2 * OLD) in problem["detail"]
    assert problem["total_cents"] == 2 * NEW
    assert problem["items"] == [
        {"item_id": PIZZA, "name": "Margherita", "quantity": 2, "price_cents": NEW}
    ]
    assert (await r2.get("/api/account", headers=buyer)).json() == {"balance_cents": 5000}
    assert (await r2.get("/api/orders", headers=buyer)).json()["orders"] == []
    assert len((await r2.get("/api/cart", headers=buyer)).json()["items"]) == 1

    paid = await _checkout(r2, buyer, "c2", {"expected_total_cents": problem["total_cents"]})
    assert paid.status_code == 201, paid.text
    assert (paid.json()["total_cents"], paid.json()["balance_cents"]) == (2 * NEW, 5000 - 2 * NEW)


async def test_checkout_requires_the_total_that_was_shown(shop: ShopFactory) -> None:
    client = await shop("stateless")
    headers = await register_and_login(client, "ivy")
    await client.post(
        "/api/account/top-up",
        json={"amount_cents": 5000},
        headers={**headers, "Idempotency-Key": "t"},
    )
    await client.post("/api/cart/items", json={"item_id": PIZZA, "quantity": 1}, headers=headers)
    missing = await client.post("/api/checkout", headers={**headers, "Idempotency-Key": "m"})
    assert (missing.status_code, missing.headers["content-type"]) == (422, PROBLEM)
    bad_bodies = [{}, *({"expected_total_cents": v} for v in ("900", True, 900.0, -1, None))]
    for n, bad in enumerate(bad_bodies):
        r = await _checkout(client, headers, f"b{n}", bad)
        assert (r.status_code, r.headers["content-type"]) == (422, PROBLEM), bad
    assert (await client.get("/api/account", headers=headers)).json() == {"balance_cents": 5000}
    assert (
        await _checkout(client, headers, "ok", {"expected_total_cents": OLD})
    ).status_code == 201
