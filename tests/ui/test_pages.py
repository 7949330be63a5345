"""The shop's pages over a real app (no browser): what each page renders from the
stores of the replica that serves it, and how pages treat strangers and errors."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from statelab.config import build_settings
from statelab.db.migrate import upgrade
from statelab.web.app import create_app
from statelab.web.pages import money, safe_next

SECRET = "pages-tests-df39614cbc315931b3318e4d9c55cb2bb338850ac2333241a994d02dbfa133c4"
PASSWORD = "correct horse battery"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    upgrade(url)  # synchronous: Alembic runs its own event loop
    return url


async def _replica(tmp_path: Path, url: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    base = {
        "replica_id": "r7",
        "database_url": url,
        "secret_key": SECRET,
        "data_dir": tmp_path / "data",
        "argon2_time_cost": 1,
        "argon2_memory_kib": 1024,
    }
    app = create_app(build_settings(**{**base, **settings}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture
async def stateful(tmp_path: Path, sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _replica(tmp_path, sqlite_url, profile="stateful"):
        yield client


@pytest.fixture
async def token(
    tmp_path: Path, sqlite_url: str, redis_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _replica(tmp_path, sqlite_url, profile="token", redis_url=redis_url):
        yield client


async def _login(client: httpx.AsyncClient, username: str = "alice") -> dict[str, Any]:
    body = {"username": username, "password": PASSWORD}
    assert (await client.post("/api/auth/register", json=body)).status_code == 201
    r = await client.post("/api/auth/login", json=body)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def _badge(html: str) -> tuple[str, str]:
    served = re.search(r'data-testid="served-by">([^<]+)<', html)
    profile = re.search(r'data-testid="profile">([^<]+)<', html)
    assert served and profile, html[:500]
    return served.group(1), profile.group(1)


@pytest.mark.parametrize("path", ["/", "/menu", "/cart", "/login", "/register"])
async def test_every_page_names_its_replica_and_profile(
    stateful: httpx.AsyncClient, path: str
) -> None:
    r = await stateful.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["x-served-by"] == "r7"
    assert _badge(r.text) == ("r7", "stateful")
    assert r.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in r.headers["content-security-policy"]


@pytest.mark.parametrize("path", ["/orders", "/account", "/chat", "/photos"])
async def test_private_pages_send_strangers_to_login(
    stateful: httpx.AsyncClient, path: str
) -> None:
    r = await stateful.get(path, params={"x": "1"})
    assert r.status_code == 303
    assert r.headers["location"] == f"/login?next={path}%3Fx%3D1"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("/cart", "/cart"),
        ("/chat?room=abc", "/chat?room=abc"),
        ("//evil.example/", "/menu"),
        ("https://evil.example/", "/menu"),
        ("/\\evil.example", "/menu"),
        (None, "/menu"),
    ],
)
def test_login_only_returns_to_local_pages(given: str | None, kept: str) -> None:
    assert safe_next(given) == kept


async def test_login_page_does_not_echo_a_foreign_next(stateful: httpx.AsyncClient) -> None:
    r = await stateful.get("/login", params={"next": "//evil.example/"})
    assert 'data-next="/menu"' in r.text
    assert "evil.example" not in r.text


def test_money() -> None:
    assert [money(c) for c in (0, 5, 900, 123456, -250)] == [
        "€0.00",
        "€0.05",
        "€9.00",
        "€1234.56",
        "-€2.50",
    ]


async def test_pages_show_the_logged_in_users_state(stateful: httpx.AsyncClient) -> None:
    login = await _login(stateful)
    headers = {"X-CSRF-Token": login["csrf_token"]}
    r = await stateful.get("/menu")
    assert 'data-testid="username">alice<' in r.text
    assert f'<meta name="csrf-token" content="{login["csrf_token"]}">' in r.text

    await stateful.post("/api/cart/items", json={"item_id": 4, "quantity": 2}, headers=headers)
    cart = (await stateful.get("/cart")).text
    assert "Diavola" in cart
    assert 'data-testid="cart-total">€22.00<' in cart
    assert 'aria-label="2 items">2<' in cart

    idem = {**headers, "Idempotency-Key": "top-up-1"}
    await stateful.post("/api/account/top-up", json={"amount_cents": 5000}, headers=idem)
    assert 'data-testid="balance">€50.00<' in (await stateful.get("/account")).text

    paid = await stateful.post(
        "/api/checkout",
        json={"expected_total_cents": 2200},
        headers={**headers, "Idempotency-Key": "c1"},
    )
    assert paid.status_code == 201, paid.text
    orders = (await stateful.get("/orders")).text
    assert f"Order #{paid.json()['id']}" in orders
    assert "2 \N{MULTIPLICATION SIGN} Diavola" in orders
    assert "Your cart is empty" in (await stateful.get("/cart")).text


async def test_an_anonymous_cart_shows_with_its_csrf_token(stateful: httpx.AsyncClient) -> None:
    r = await stateful.post("/api/cart/items", json={"item_id": 1, "quantity": 1})
    assert r.status_code == 200
    token = r.headers["x-csrf-token"]
    page = (await stateful.get("/cart")).text
    assert f'<meta name="csrf-token" content="{token}">' in page
    assert "Margherita" in page
    assert 'id="anonymous"' in page


async def test_pages_know_a_jwt_user_from_the_token_cookie(token: httpx.AsyncClient) -> None:
    login = await _login(token, "bob")
    assert "access_token" in login
    r = await token.get("/account")
    assert r.status_code == 200
    assert 'data-testid="username">bob<' in r.text
    assert _badge(r.text) == ("r7", "token")


async def test_a_store_that_is_down_gives_a_readable_page(
    tmp_path: Path, sqlite_url: str, closed_port: int
) -> None:
    dead_redis = f"redis://127.0.0.1:{closed_port}/0"  # nothing listens there
    async for client in _replica(
        tmp_path, sqlite_url, profile="stateful", place={"cart": "redis"}, redis_url=dead_redis
    ):
        client.cookies.set("statelab_anon", "visitor-1")
        r = await client.get("/cart")
        assert r.status_code == 503
        assert r.headers["content-type"].startswith("text/html")
        assert r.headers["retry-after"]
        assert _badge(r.text)[0] == "r7"
        assert "not answering" in r.text


async def test_static_files_are_served(stateful: httpx.AsyncClient) -> None:
    r = await stateful.get("/static/app.js")
    assert r.status_code == 200
    assert "javascript" in r.headers["content-type"]
    assert "X-CSRF-Token" in r.text
