"""Bad input gets a clear problem+json answer; a down store gives 503, never a 500."""

from __future__ import annotations

import httpx
import pytest
from pydantic import TypeAdapter, ValidationError

from statelab.db.migrate import upgrade
from statelab.web.chat import ClientFrame
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
    healthy = await shop(profile)  # registration is rate-limited through Redis
    r = await healthy.post(
        "/api/auth/register", json={"username": "ivan", "password": "long enough pw"}
    )
    assert r.status_code == 201
    client = await shop(profile, replica_id="r2", redis_url=dead_redis)
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["stores"]["redis"] is False
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


# ------------------------------------------------ bounded integers, no NUL at the edge

#: Past 2**63 - 1, the range of every integer column (BIGINT; SQLite's INTEGER).
HUGE = "99999999999999999999"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> dict[str, str]:
    """The shop's database: its own SQLite file, or a migrated PostgreSQL database."""
    if request.param == "sqlite":
        return {}
    url: str = request.getfixturevalue("postgres_url")
    upgrade(url)
    return {"database_url": url}


def _invalid(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    assert field in [e["field"] for e in r.json()["errors"]], r.text


def _upload(filename: str) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (filename, PNG, "image/png")}


def _raw_upload(filename: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart body whose filename is sent as given (httpx would escape a NUL)."""
    part = b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"'
    body = b"--b0undary\r\n" + part + b"\r\n\r\n" + PNG + b"\r\n--b0undary--\r\n"
    return body, {"content-type": "multipart/form-data; boundary=b0undary"}


async def test_integers_past_the_columns_are_422_not_driver_errors(
    shop: ShopFactory, database: dict[str, str]
) -> None:
    client = await shop("stateless", **database)
    client.headers.update(await register_and_login(client))  # for every write below
    room = await client.post("/api/chat/rooms", json={"name": "bounds"})
    messages = f"/api/chat/rooms/{room.json()['id']}/messages"
    upload = f"/api/files?order_id={HUGE}"
    cases = [
        ("path.order_id", await client.get(f"/api/orders/{HUGE}")),
        ("path.order_id", await client.get("/api/orders/-2340737214241200475734016")),
        ("query.after", await client.get(f"{messages}?after=9202776693223255441408")),
        ("query.order_id", await client.post(upload, files=_upload("a.png"))),
        ("path.item_id", await client.delete(f"/api/cart/items/{HUGE}")),
        ("item_id", await client.post("/api/cart/items", json={"item_id": int(HUGE)})),
        ("quantity", await client.patch("/api/cart/items/1", json={"quantity": -int(HUGE)})),
    ]
    for field, r in cases:
        _invalid(r, field)
    # The bound is the column's: the largest id reaches the store, which has no such order.
    assert (await client.get(f"/api/orders/{2**63 - 1}")).status_code == 404
    assert (await client.get(f"{messages}?after={2**63 - 1}")).json() == {"messages": []}


async def test_nul_characters_are_422_and_change_nothing(
    shop: ShopFactory, database: dict[str, str]
) -> None:
    client = await shop("stateless", **database)
    client.headers.update(await register_and_login(client))  # for every write below
    room = (await client.post("/api/chat/rooms", json={"name": "lobby"})).json()
    nul, login = "a\x00b", "/api/auth/login"
    cases = [
        ("username", await client.post(login, json={"username": nul, "password": "x"})),
        ("password", await client.post(login, json={"username": "alice", "password": nul})),
        ("name", await client.post("/api/chat/rooms", json={"name": nul})),
        ("path.room_id", await client.post("/api/chat/rooms/a%00b/join")),
        ("path.room_id", await client.get("/api/chat/rooms/a%00b/messages")),
        ("path.file_id", await client.get("/api/files/a%00b")),
        ("path.file_id", await client.delete("/api/files/a%00b")),
    ]
    for field, r in cases:
        _invalid(r, field)
    body, multipart = _raw_upload(b"cat\x00.png")
    r = await client.post("/api/files", content=body, headers=multipart)
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "filename: must not contain a NUL character"
    assert (await client.get("/api/files")).json() == {"files": []}
    rooms = (await client.get("/api/chat/rooms")).json()["rooms"]
    assert [r["id"] for r in rooms] == [room["id"]]


def test_chat_frames_refuse_nul_and_unbounded_sequence_numbers() -> None:
    frames: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
    frames.validate_json('{"type": "send", "room": "r", "client_msg_id": "m1", "text": "hi"}')
    refused = [
        '{"type": "send", "room": "r", "client_msg_id": "m1", "text": "a\\u0000b"}',
        '{"type": "send", "room": "r\\u0000", "client_msg_id": "m1", "text": "hi"}',
        '{"type": "send", "room": "r", "client_msg_id": "m\\u0000", "text": "hi"}',
        f'{{"type": "read", "room": "r", "seq": {HUGE}}}',
        f'{{"type": "resume", "rooms": {{"r": {HUGE}}}}}',
    ]
    for frame in refused:
        with pytest.raises(ValidationError):
            frames.validate_json(frame)


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/api/cart/items/1", "DELETE, PATCH"),
        ("/api/files", "GET, POST"),
        ("/api/files/abc", "DELETE, GET"),
        ("/api/chat/rooms", "GET, POST"),
        ("/api/menu", "GET"),
        ("/static/app.css", "GET, HEAD"),
    ],
)
async def test_405_allows_every_method_of_the_path(
    shop: ShopFactory, path: str, allow: str
) -> None:
    client = await shop("stateless")
    for method in ("OPTIONS", "PUT"):
        r = await client.request(method, path)
        assert r.status_code == 405
        assert r.headers["allow"] == allow
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["title"] == "Method not allowed"


async def test_a_body_is_only_refused_where_a_route_reads_one(shop: ShopFactory) -> None:
    client = await shop("stateless", max_body_bytes=64)
    text = {"content-type": "text/plain"}
    assert (await client.request("GET", "/api/menu", content=b"x" * 100, headers=text)).is_success
    r = await client.post("/api/cart/items", content=b"x" * 100, headers=text)
    assert r.status_code == 413
    r = await client.post("/api/cart/items", content=b"x", headers=text)
    assert r.status_code == 415
