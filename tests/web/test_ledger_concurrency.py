"""Money under concurrency: never below zero, conserved, one charge per key —
through several replicas sharing one database, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from statelab.db.migrate import upgrade
from tests.support import register_and_login, share_login
from tests.web.conftest import ShopFactory


async def _funded_replicas(
    shop: ShopFactory, database_url: str | None, cents: int
) -> tuple[list[httpx.AsyncClient], dict[str, str]]:
    """Three replicas of one deployment, all logged in as alice, who has ``cents``."""
    extra = {"database_url": database_url} if database_url else {}
    replicas = [await shop("stateless", replica_id=f"r{i}", **extra) for i in (1, 2, 3)]
    headers = await register_and_login(replicas[0])
    for other in replicas[1:]:
        share_login(replicas[0], other)
    r = await replicas[0].post(
        "/api/account/top-up",
        json={"amount_cents": cents},
        headers={**headers, "Idempotency-Key": "t"},
    )
    assert r.status_code == 200
    return replicas, headers


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None  # the shop fixture's migrated SQLite file
    url: str = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


async def test_concurrent_withdrawals_never_overdraw(
    shop: ShopFactory, database_url: str | None
) -> None:
    replicas, headers = await _funded_replicas(shop, database_url, 1000)

    async def withdraw(i: int) -> int:
        client = replicas[i % len(replicas)]
        r = await client.post(
            "/api/account/withdraw",
            json={"amount_cents": 70},
            headers={**headers, "Idempotency-Key": f"w{i}"},
        )
        return r.status_code

    statuses = await asyncio.gather(*(withdraw(i) for i in range(40)))
    assert set(statuses) <= {200, 409}
    paid = statuses.count(200)
    assert paid == 1000 // 70  # 14 succeed, the rest find too little money
    balance = (await replicas[1].get("/api/account", headers=headers)).json()["balance_cents"]
    assert balance == 1000 - 70 * paid
    assert balance >= 0


async def test_one_charge_per_key_under_concurrent_retries(
    shop: ShopFactory, database_url: str | None
) -> None:
    replicas, headers = await _funded_replicas(shop, database_url, 5000)

    async def retry(i: int) -> httpx.Response:
        return await replicas[i % 3].post(
            "/api/account/withdraw",
            json={"amount_cents": 100},
            headers={**headers, "Idempotency-Key": "same"},
        )

    answers = await asyncio.gather(*(retry(i) for i in range(12)))
    # A duplicate waits for the attempt holding the key and replays its answer:
    # every attempt is answered, one applied and the others replayed.
    assert [a.status_code for a in answers] == [200] * 12
    assert {a.json()["balance_cents"] for a in answers} == {4900}
    replayed = [a.headers.get("Idempotent-Replayed") == "true" for a in answers]
    assert replayed.count(False) == 1
    final = (await replicas[2].get("/api/account", headers=headers)).json()["balance_cents"]
    assert final == 4900
