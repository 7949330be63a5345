"""Idempotency-Keys through the API: a refusal is replayed as the same problem,
and keys are forgotten once ``idempotency_ttl_seconds`` have passed (the app's
sweep for the SQL ledger, the ledger itself in memory)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.support import register_and_login
from tests.web.conftest import ShopFactory

LEDGER = ["memory", "db", "replicated"]


@pytest.mark.parametrize("ledger", LEDGER)
async def test_a_refusal_is_replayed_as_the_same_problem(shop: ShopFactory, ledger: str) -> None:
    client = await shop("stateless", place={"ledger": ledger})
    headers = await register_and_login(client)

    async def money(path: str, key: str, cents: int) -> httpx.Response:
        idem = {**headers, "Idempotency-Key": key}
        return await client.post(path, json={"amount_cents": cents}, headers=idem)

    refused = await money("/api/account/withdraw", "w", 300)
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["title"] == "Insufficient funds"
    assert "Idempotent-Replayed" not in refused.headers
    assert (await money("/api/account/top-up", "t", 1000)).status_code == 200

    again = await money("/api/account/withdraw", "w", 300)
    assert again.status_code == 409
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == refused.json()
    assert (await client.get("/api/account", headers=headers)).json() == {"balance_cents": 1000}


@pytest.mark.parametrize("ledger", LEDGER)
async def test_keys_are_forgotten_after_their_ttl(shop: ShopFactory, ledger: str) -> None:
    # The periodic work forgets expired keys: here each replica runs it every second.
    place = {"ledger": ledger, "timers": "inprocess"}
    client = await shop("stateless", place=place, idempotency_ttl_seconds=1, timer_period_seconds=1)
    headers = await register_and_login(client)

    async def top_up(cents: int) -> httpx.Response:
        idem = {**headers, "Idempotency-Key": "k"}
        return await client.post("/api/account/top-up", json={"amount_cents": cents}, headers=idem)

    assert (await top_up(100)).status_code == 200
    # While the key is remembered, another body with it is refused; once it is
    # forgotten, the same key is a new request.
    deadline = time.monotonic() + 15
    while (answer := await top_up(250)).status_code == 422:
        assert time.monotonic() < deadline, "the key was never forgotten"
        await asyncio.sleep(0.2)
    assert answer.status_code == 200
    assert answer.json() == {"balance_cents": 350}
