"""Who may use the control API and its dashboard: loopback only without a token,
the token with one, and never a state change sent from another site."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from statelab.cluster import dashboard

TOKEN = "lab-token-0123456789abcdef"


def _control_app(token: str | None) -> FastAPI:
    """A control-shaped app: one read and one write route, guarded like the real one."""
    app = FastAPI()

    @app.get("/status")
    async def status() -> dict[str, str]:
        return {"profile": "stateless"}

    @app.post("/replicas/r1/kill")
    async def kill() -> dict[str, str]:
        return {"id": "r1"}

    dashboard.install(app, token=token)
    return app


def _client(
    app: FastAPI, client_host: str = "127.0.0.1", base: str = "http://127.0.0.1:8001"
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
    return httpx.AsyncClient(transport=transport, base_url=base)


@pytest.fixture
async def loopback() -> AsyncIterator[httpx.AsyncClient]:
    async with _client(_control_app(None)) as client:
        yield client


async def test_loopback_client_may_read_and_act(loopback: httpx.AsyncClient) -> None:
    assert (await loopback.get("/status")).json() == {"profile": "stateless"}
    assert (await loopback.post("/replicas/r1/kill")).status_code == 200
    # The dashboard's own fetches are same-origin: Origin names this host.
    same = {"Origin": "http://127.0.0.1:8001", "Sec-Fetch-Site": "same-origin"}
    assert (await loopback.post("/replicas/r1/kill", headers=same)).status_code == 200


async def test_other_sites_cannot_act_through_a_browser(loopback: httpx.AsyncClient) -> None:
    evil = {"Origin": "http://evil.example"}
    r = await loopback.post("/replicas/r1/kill", headers=evil)
    assert r.status_code == 403
    assert "cross-site" in r.json()["error"]
    r = await loopback.post("/replicas/r1/kill", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403


async def test_a_foreign_host_name_is_refused(loopback: httpx.AsyncClient) -> None:
    """DNS rebinding: evil.example resolving to 127.0.0.1 still says Host: evil.example."""
    r = await loopback.get("/status", headers={"Host": "evil.example:8001"})
    assert r.status_code == 403
    assert r.json() == {"error": "the control API answers loopback clients only"}


async def test_without_a_token_only_loopback_clients_get_in() -> None:
    async with _client(_control_app(None), client_host="192.0.2.7") as remote:
        assert (await remote.get("/status")).status_code == 403


async def test_with_a_token_every_request_must_carry_it() -> None:
    app = _control_app(TOKEN)
    async with _client(app, client_host="192.0.2.7", base="http://lab.example:8001") as remote:
        assert (await remote.get("/status")).status_code == 401
        bad = {"Authorization": "Bearer wrong-token-0123456789"}
        assert (await remote.get("/status", headers=bad)).status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert (await remote.get("/status", headers=good)).status_code == 200

        # A browser opens /?token=T once: it gets a cookie, and a URL without the token.
        r = await remote.get("/", params={"token": TOKEN})
        assert r.status_code == 303
        assert r.headers["location"] == "/"
        assert r.cookies[dashboard.TOKEN_COOKIE] == TOKEN
        assert "samesite=strict" in r.headers["set-cookie"].lower()
        assert (await remote.get("/status")).status_code == 200  # the cookie now


async def test_a_wrong_token_in_the_url_sets_nothing() -> None:
    async with _client(_control_app(TOKEN)) as client:
        r = await client.get("/", params={"token": "not-the-token-at-all"})
        assert r.status_code == 401
        assert dashboard.TOKEN_COOKIE not in r.cookies


def test_short_tokens_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        dashboard.ControlGuard(FastAPI(), token="short")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("[::1]", True),
        ("::1", True),
        ("10.0.0.1", False),
        ("evil.example", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert dashboard.is_loopback(host) is loopback
