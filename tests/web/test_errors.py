"""Bad input gets a clear problem+json answer; a down store gives 503, never a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.support import register_and_login
from tests.web.conftest import ShopFactory

PROBLEM = "application/problem+json"


async def test_bad_requests_get_problem_json(shop: ShopFactory) -> None:
    client = await shop("stateless", max_body_bytes=2048)
    headers = await register_and_login(client)
    cases: list[tuple[int, httpx.Response]] = [
        (
            400,
            await client.post(
                "/api/cart/items",
                content=b"{oops",
                headers={**headers, "content-type": "application/json"},
            ),
        ),
        (
            415,
            await client.post(
                "/api/cart/items",
                content=b"item_id=1",
                headers={**headers, "content-type": "application/x-www-form-urlencoded"},
            ),
        ),
        (
            413,
            await client.post(
                "/api/cart/items",
                content=b"[" + b"1," * 2000 + b"1]",
                headers={**headers, "content-type": "application/json"},
            ),
        ),
        (422, await client.post("/api/cart/items", json={"item_id": "pizza"}, headers=headers)),
        (422, await client.post("/api/auth/register", json={"username": "x", "password": "short"})),
        (
            409,
            await client.post(
                "/api/auth/register", json={"username": "alice", "password": "long enough pw"}
            ),
        ),
        (404, await client.get("/api/no-such-thing")),
        (405, await client.put("/api/menu", json={})),
        (401, await (await shop.device(client)).get("/api/orders")),
    ]
    for status, r in cases:
        assert r.status_code == status, (status, r.text)
        assert r.headers["content-type"] == PROBLEM
        body = r.json()
        assert body["status"] == status
        assert body["title"]
        assert body["detail"]


async def test_validation_problems_name_the_field(shop: ShopFactory) -> None:
    client = await shop("stateless")
    headers = await register_and_login(client)
    r = await client.post("/api/cart/items", json={"quantity": 1}, headers=headers)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "item_id"


async def test_every_response_says_which_replica_served_it(shop: ShopFactory) -> None:
    client = await shop("stateless", replica_id="r7")
    for path in ("/api/menu", "/healthz", "/readyz", "/metrics", "/api/nope"):
        assert (await client.get(path)).headers["X-Served-By"] == "r7"


async def test_menu_and_openapi(shop: ShopFactory) -> None:
    client = await shop("stateless")
    items = (await client.get("/api/menu")).json()["items"]
    assert {item["kind"] for item in items} == {"pizza", "drink", "dessert"}
    assert all(isinstance(item["price_cents"], int) for item in items)
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in (
        "/api/auth/login",
        "/api/cart/items/{item_id}",
        "/api/checkout",
        "/api/orders/{order_id}",
    ):
        assert path in paths


async def test_metrics_are_labelled_with_the_replica(shop: ShopFactory) -> None:
    client = await shop("stateless", replica_id="r3")
    await client.get("/api/menu")
    text = (await client.get("/metrics")).text
    assert 'statelab_requests_total{endpoint="menu",method="GET",replica="r3",status="200"}' in text


@pytest.mark.parametrize("profile", ["stateless", "token"])
async def test_redis_down_gives_503_with_retry_after(
    shop: ShopFactory, profile: str, closed_port: int
) -> None:
    dead_redis = f"redis://127.0.0.1:{closed_port}/0"
    client = await shop(profile, redis_url=dead_redis)
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["stores"]["redis"] is False
    r = await client.post(
        "/api/auth/register", json={"username": "ivan", "password": "long enough pw"}
    )
    assert r.status_code == 201, "accounts live in SQL, which is up"
    r = await client.post(
        "/api/auth/login", json={"username": "ivan", "password": "long enough pw"}
    )
    assert r.status_code == 503
    assert r.headers["content-type"] == PROBLEM
    assert "Retry-After" in r.headers


async def test_database_down_gives_503(shop: ShopFactory, closed_port: int) -> None:
    client = await shop("stateless", database_url=f"postgresql://nobody@127.0.0.1:{closed_port}/x")
    assert (await client.get("/readyz")).status_code == 503
    r = await client.post(
        "/api/auth/register", json={"username": "joan", "password": "long enough pw"}
    )
    assert r.status_code == 503
    assert r.headers["content-type"] == PROBLEM
