"""Security properties: tokens, fixation, CSRF, rate limits, owners, cookies, hashes,
redirects and proxies."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import jwt
import pytest
from sqlalchemy import create_engine, text

from statelab.keyring import derive
from statelab.web.pages import safe_next
from tests.chat.support import Replica
from tests.support import PASSWORD, login, register_and_login
from tests.web.conftest import SECRET, ShopFactory


def _token(**claims: object) -> str:
    now = int(time.time())
    base: dict[str, object] = {
        "sub": "1",
        "name": "alice",
        "jti": "j1",
        "iat": now,
        "exp": now + 600,
        "iss": "statelab",
        "aud": "statelab-shop",
    }
    base.update(claims)
    payload = {k: v for k, v in base.items() if v is not None}
    key = derive(SECRET, "jwt")  # the JWT purpose's key, derived from the secret
    return jwt.encode(payload, key, algorithm="HS256", headers={"kid": "k1"})


def _unsigned(payload: dict[str, object]) -> str:
    import base64
    import json

    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{part(payload)}."


async def test_valid_forged_token_is_accepted_only_when_signed_right(shop: ShopFactory) -> None:
    client = await shop("token")
    await register_and_login(client)
    client.cookies.clear()
    good = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {_token()}"})
    assert good.status_code == 200, "a well-formed token signed with the key is accepted"
    now = int(time.time())
    # Complete and fresh: each of the last three tokens is wrong only in how it is signed.
    claims: dict[str, object] = {
        "sub": "1",
        "jti": "x",
        "iat": now,
        "exp": now + 60,
        "iss": "statelab",
        "aud": "statelab-shop",
    }
    bad_tokens = {
        "expired": _token(exp=now - 60, iat=now - 700),
        "no exp": _token(exp=None),
        "wrong aud": _token(aud="someone-else"),
        "no aud": _token(aud=None),
        "wrong iss": _token(iss="evil"),
        "no iss": _token(iss=None),
        "forged signature": jwt.encode(
            claims, "another-secret-of-sufficient-length", algorithm="HS256", headers={"kid": "k1"}
        ),
        "unknown kid": jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "k9"}),
        "alg none": _unsigned(claims),
        "garbage": "not.a.token",
    }
    for name, token in bad_tokens.items():
        r = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, name


async def test_key_rotation_accepts_old_kid_and_signs_with_new(shop: ShopFactory) -> None:
    old = await shop("token", jwt_keys={"k1": SECRET}, jwt_active_kid="k1")
    headers = await register_and_login(old)
    token = headers["Authorization"].removeprefix("Bearer ")
    rotated = await shop(
        "token",
        jwt_keys={
            "k1": SECRET,
            "k2": "a7594a08975eef0784c206252ca88e31e2df06d488cf8cf2e23be66a3c637235",
        },
        jwt_active_kid="k2",
    )
    assert (await rotated.get("/api/auth/me", headers=headers)).status_code == 200
    fresh = await login(rotated)
    assert jwt.get_unverified_header(fresh["Authorization"].split()[1])["kid"] == "k2"
    assert jwt.get_unverified_header(token)["kid"] == "k1"


@pytest.mark.parametrize("profile", ["stateful", "stateless"])
async def test_login_regenerates_the_session_id(shop: ShopFactory, profile: str) -> None:
    client = await shop(profile)
    await register_and_login(client)
    first = client.cookies["statelab_session"]
    r = await client.post("/api/auth/login", json={"username": "alice", "password": PASSWORD})
    second = r.cookies["statelab_session"]
    assert first != second
    assert len(second) >= 22  # 128 bits, base64url
    stale = await shop.device(client)
    stale.cookies.set("statelab_session", first)
    assert (await stale.get("/api/auth/me")).status_code == 401

    planted = await shop.device(client)
    planted.cookies.set("statelab_session", "attacker-chosen-session-id")
    r = await planted.post("/api/auth/login", json={"username": "alice", "password": PASSWORD})
    assert r.status_code == 200
    assert r.cookies["statelab_session"] not in ("attacker-chosen-session-id", first, second)


@pytest.mark.parametrize("profile", ["stateful", "stateless", "token"])
async def test_cookie_writes_need_the_csrf_token(shop: ShopFactory, profile: str) -> None:
    client = await shop(profile)
    await register_and_login(client)
    r = await client.post("/api/cart/items", json={"item_id": 1, "quantity": 1})
    assert r.status_code == 403
    r = await client.post(
        "/api/cart/items", json={"item_id": 1, "quantity": 1}, headers={"X-CSRF-Token": "wrong"}
    )
    assert r.status_code == 403
    assert (await client.get("/api/cart")).json()["items"] == [], "a refused write changes nothing"
    r = await client.post("/api/auth/logout")
    assert r.status_code == 403
    csrf = (await client.get("/api/auth/csrf")).json()["csrf_token"]
    r = await client.post(
        "/api/cart/items", json={"item_id": 1, "quantity": 1}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status_code == 200


async def test_login_rate_limit_holds_across_replicas(shop: ShopFactory) -> None:
    replicas = [
        await shop("stateless", replica_id=f"r{i}", login_limit_per_account=4) for i in (1, 2)
    ]
    await replicas[0].post("/api/auth/register", json={"username": "carol", "password": PASSWORD})
    codes = []
    for attempt in range(6):
        r = await replicas[attempt % 2].post(
            "/api/auth/login", json={"username": "carol", "password": "wrong-password"}
        )
        codes.append(r.status_code)
    assert codes == [401, 401, 401, 401, 429, 429]
    assert int(r.headers["Retry-After"]) >= 1
    assert r.headers["content-type"] == "application/problem+json"
    blocked = await replicas[0].post(
        "/api/auth/login", json={"username": "carol", "password": PASSWORD}
    )
    assert blocked.status_code == 429, "the right password does not bypass the limit"


async def test_memory_rate_limit_counts_per_replica(shop: ShopFactory) -> None:
    replicas = [
        await shop("stateful", replica_id=f"r{i}", login_limit_per_account=2) for i in (1, 2)
    ]
    await replicas[0].post("/api/auth/register", json={"username": "dave", "password": PASSWORD})
    codes = [
        (
            await replicas[i % 2].post(
                "/api/auth/login", json={"username": "dave", "password": "wrong-password"}
            )
        ).status_code
        for i in range(4)
    ]
    assert codes == [401, 401, 401, 401], "two replicas in memory allow twice the limit"


@pytest.mark.parametrize("profile", ["stateful", "stateless", "token"])
async def test_no_reading_another_users_orders_or_cart(shop: ShopFactory, profile: str) -> None:
    alice = await shop(profile)
    mallory = await shop.device(alice)
    a = await register_and_login(alice, "alice")
    m = await register_and_login(mallory, "mallory")
    await alice.post("/api/cart/items", json={"item_id": 3, "quantity": 1}, headers=a)
    await alice.post(
        "/api/account/top-up", json={"amount_cents": 2000}, headers={**a, "Idempotency-Key": "t"}
    )
    order = (
        await alice.post(
            "/api/checkout",
            json={"expected_total_cents": 1150},
            headers={**a, "Idempotency-Key": "c"},
        )
    ).json()
    assert (await mallory.get(f"/api/orders/{order['id']}", headers=m)).status_code == 404
    assert (await mallory.get("/api/orders", headers=m)).json()["orders"] == []
    await alice.post("/api/cart/items", json={"item_id": 3, "quantity": 1}, headers=a)
    if "statelab_cart" in alice.cookies:  # the client placement: steal the signed cart cookie
        mallory.cookies.set("statelab_cart", alice.cookies["statelab_cart"])
    assert (await mallory.get("/api/cart", headers=m)).json()["items"] == []


async def test_cookie_flags(shop: ShopFactory) -> None:
    plain = await shop("stateless")
    await plain.post("/api/auth/register", json={"username": "erin", "password": PASSWORD})
    r = await plain.post("/api/auth/login", json={"username": "erin", "password": PASSWORD})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    assert "secure" not in cookie
    tls = await shop("stateless", scheme="https")
    r = await tls.post("/api/auth/login", json={"username": "erin", "password": PASSWORD})
    assert "; secure" in r.headers["set-cookie"].lower()


async def test_passwords_are_stored_as_argon2_hashes(shop: ShopFactory, sqlite_url: str) -> None:
    client = await shop("stateless")
    await register_and_login(client, "frank")
    engine = create_engine(sqlite_url)
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT password_hash FROM users WHERE username='frank'")
        ).scalar()
    engine.dispose()
    assert isinstance(stored, str)
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


async def test_unknown_user_and_wrong_password_look_the_same(shop: ShopFactory) -> None:
    client = await shop("stateless")
    await register_and_login(client, "gina")
    wrong = await client.post(
        "/api/auth/login", json={"username": "gina", "password": "nope-nope-1"}
    )
    ghost = await client.post(
        "/api/auth/login", json={"username": "nobody", "password": "nope-nope-1"}
    )
    assert wrong.status_code == ghost.status_code == 401
    assert wrong.json()["detail"] == ghost.json()["detail"]


async def test_expired_session_is_refused(shop: ShopFactory) -> None:
    client = await shop("stateless", session_idle_seconds=1)
    headers = await register_and_login(client, "hank")
    assert (await client.get("/api/auth/me", headers=headers)).status_code == 200
    await _sleep(2.2)
    assert (await client.get("/api/auth/me", headers=headers)).status_code == 401


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@pytest.mark.parametrize("profile", ["stateful", "stateless"])
async def test_a_session_in_use_outlives_its_idle_timeout(shop: ShopFactory, profile: str) -> None:
    client = await shop(profile, session_idle_seconds=2)
    headers = await register_and_login(client, "ines")
    for _ in range(4):  # 4 x 1.2 s = 4.8 s, more than twice the idle timeout
        await _sleep(1.2)
        assert (await client.get("/api/auth/me", headers=headers)).status_code == 200


async def test_a_token_accepted_once_is_refused_after_it_expires(shop: ShopFactory) -> None:
    """Replicas remember tokens they verified; expiry must still end them."""
    client = await shop("token")
    await register_and_login(client)
    client.cookies.clear()
    now = int(time.time())
    short = _token(jti="short", iat=now, exp=now + 1)
    headers = {"Authorization": f"Bearer {short}"}
    assert (await client.get("/api/auth/me", headers=headers)).status_code == 200
    await asyncio.sleep(1 + 5 + 0.5)  # past exp and the 5 s clock-skew leeway
    assert (await client.get("/api/auth/me", headers=headers)).status_code == 401


async def test_registration_is_limited_per_address_across_replicas(shop: ShopFactory) -> None:
    """Each registration costs a password hash: parallel ones from one address,
    spread over two replicas, get 201 up to the limit and then 429."""
    replicas = [
        await shop("stateless", replica_id=f"r{i}", register_limit_per_address=5) for i in (1, 2)
    ]
    names = [f"burst{i}" for i in range(12)]
    answers = await asyncio.gather(
        *(
            replicas[i % 2].post("/api/auth/register", json={"username": n, "password": PASSWORD})
            for i, n in enumerate(names)
        )
    )
    codes = sorted(r.status_code for r in answers)
    assert codes == [201] * 5 + [429] * 7
    refused = [(n, r) for n, r in zip(names, answers, strict=True) if r.status_code == 429]
    assert all(int(r.headers["Retry-After"]) >= 1 for _, r in refused)
    assert all(r.headers["content-type"] == "application/problem+json" for _, r in refused)
    for name, _ in refused:  # a refused registration created nothing
        r = await replicas[0].post("/api/auth/login", json={"username": name, "password": PASSWORD})
        assert r.status_code == 401


@pytest.mark.parametrize(
    "given",
    [
        "/\t/evil.example",
        "/\n/evil.example",
        "/\r/evil.example",
        "/%09/evil.example",
        "/%0A/evil.example",
        "/%5Cevil.example",
        " //evil.example",
        "/\x00/evil.example",
        "/\u2028/evil.example",
    ],
)
def test_next_with_hidden_characters_stays_on_the_site(given: str) -> None:
    assert safe_next(given) == "/menu"


async def test_login_page_refuses_a_next_the_browser_would_turn_into_another_host(
    shop: ShopFactory,
) -> None:
    client = await shop("stateful")
    for encoded in ("%09", "%0A", "%0D", "%5C"):
        r = await client.get(f"/login?next=/{encoded}/evil.example")
        assert r.status_code == 200
        assert 'data-next="/menu"' in r.text, encoded
        assert "evil.example" not in r.text
    kept = await client.get("/login?next=/chat%3Froom%3Dabc")
    assert 'data-next="/chat?room=abc"' in kept.text


def _logins_refused(replica: Replica, forwarded_for: list[str]) -> list[int]:
    """Failed logins, each claiming another client address; their status codes."""
    codes = []
    with httpx.Client(base_url=replica.http, timeout=10) as client:
        for i, address in enumerate(forwarded_for):
            r = client.post(
                "/api/auth/login",
                json={"username": f"nobody{i}", "password": "wrong-password"},
                headers={"X-Forwarded-For": address},
            )
            codes.append(r.status_code)
    return codes


def test_only_a_trusted_proxy_names_the_client_address(tmp_path: Path, sqlite_url: str) -> None:
    """A peer that is not a trusted proxy cannot pick the address the rate limit counts."""
    limit = {"STATELAB_LOGIN_LIMIT_PER_ADDRESS": "2"}
    untrusted = Replica(
        tmp_path,
        "r1",
        "stateful",
        sqlite_url,
        None,
        {**limit, "STATELAB_TRUSTED_PROXIES": "192.0.2.10"},
    )
    trusted = Replica(
        tmp_path,
        "r2",
        "stateful",
        sqlite_url,
        None,
        {**limit, "STATELAB_TRUSTED_PROXIES": "127.0.0.1"},
    )
    spoofed = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
    try:
        for replica in (untrusted, trusted):
            replica.start()
        for replica in (untrusted, trusted):
            replica.wait_ready(30)
        assert _logins_refused(untrusted, spoofed) == [401, 401, 429]
        assert _logins_refused(trusted, spoofed) == [401, 401, 401], "the proxy is believed"
    finally:
        for replica in (untrusted, trusted):
            replica.stop(10)
