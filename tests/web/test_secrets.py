"""What replicas sign is signed with a key of its purpose, never with the secret
itself; a replica on the development key says so when it starts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from pathlib import Path

import jwt
import pytest

from statelab.config import build_settings
from statelab.keyring import derive
from statelab.web.app import create_app
from statelab.web.deps import ANON_COOKIE, CART_COOKIE, CSRF_HEADER
from tests.support import register_and_login, unique
from tests.web.conftest import SECRET, ShopFactory


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_tokens_verify_under_the_jwt_key_only(shop: ShopFactory) -> None:
    client = await shop("token")
    headers = await register_and_login(client, unique("jwt"))
    token = headers["Authorization"].removeprefix("Bearer ")
    claims = jwt.decode(
        token, derive(SECRET, "jwt"), algorithms=["HS256"], audience="statelab-shop"
    )
    assert claims["iss"] == "statelab"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET, algorithms=["HS256"], audience="statelab-shop")


async def test_cart_cookies_and_anonymous_csrf_tokens_have_keys_of_their_own(
    shop: ShopFactory,
) -> None:
    client = await shop("token")  # cart=client: the cart travels in a signed cookie
    r = await client.post("/api/cart/items", json={"item_id": 1, "quantity": 2})
    assert r.status_code == 200, r.text
    anon_id, cookie = client.cookies[ANON_COOKIE], client.cookies[CART_COOKIE]
    body, _, signature = cookie.strip('"').partition(".")
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    assert signature == _b64(hmac.new(derive(SECRET, "cart"), payload, hashlib.sha256).digest())
    assert signature != _b64(hmac.new(SECRET.encode(), payload, hashlib.sha256).digest())

    message = f"csrf:{anon_id}".encode()
    token = r.headers[CSRF_HEADER]
    assert token == hmac.new(derive(SECRET, "csrf"), message, hashlib.sha256).hexdigest()[:32]
    assert token != hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()[:32]
    # ...and the token still does its job: a write with it passes, one without is refused.
    ok = await client.post(
        "/api/cart/items", json={"item_id": 2, "quantity": 1}, headers={CSRF_HEADER: token}
    )
    assert ok.status_code == 200, ok.text
    forged = await client.post("/api/cart/items", json={"item_id": 2, "quantity": 1})
    assert forged.status_code == 403


async def _start(tmp_path: Path, sqlite_url: str, **settings: str) -> None:
    app = create_app(
        build_settings(profile="stateful", database_url=sqlite_url, data_dir=tmp_path, **settings)
    )
    async with app.router.lifespan_context(app):
        pass


def _secret_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "STATELAB_SECRET_KEY" in r.getMessage()
    ]


async def test_a_replica_on_the_development_key_warns_at_start(
    tmp_path: Path,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STATELAB_SECRET_KEY", raising=False)
    with caplog.at_level(logging.WARNING):
        await _start(tmp_path, sqlite_url, secret_key=SECRET)
        assert _secret_warnings(caplog) == []
        await _start(tmp_path, sqlite_url)
    (warning,) = _secret_warnings(caplog)
    assert "no other replica" in warning and "token_hex(32)" in warning
