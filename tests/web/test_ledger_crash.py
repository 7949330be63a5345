"""A replica killed (SIGKILL) in the middle of a money move, on PostgreSQL: a retry
of the same Idempotency-Key through another replica is answered — not told the
request is "in flight" — and the money moves exactly once.

The test holds a row lock on the account, so the first replica's withdrawal is
inside its transaction, waiting, when the replica dies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from statelab.db.migrate import upgrade
from tests.chat.support import Login, Replica, login, two_replicas_of, unique


@pytest.fixture
def two_replicas(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> Iterator[tuple[Replica, Replica]]:
    """Two ``statelab serve`` processes of the stateless profile over one PostgreSQL."""
    upgrade(postgres_url)
    with two_replicas_of(tmp_path, "stateless", postgres_url, redis_url) as pair:
        yield pair


async def _money(
    http: httpx.AsyncClient, replica: Replica, who: Login, path: str, key: str, cents: int
) -> httpx.Response:
    headers = {**who.headers, **who.csrf, "Idempotency-Key": key}
    return await http.post(f"{replica.http}{path}", json={"amount_cents": cents}, headers=headers)


async def _until_a_query_waits_for_a_lock(monitor: asyncpg.Connection) -> None:
    deadline = time.monotonic() + 10
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    while not await monitor.fetchval(waiting):
        assert time.monotonic() < deadline, "the withdrawal never reached the account row"
        await asyncio.sleep(0.05)


async def test_a_retry_after_a_replica_dies_mid_withdrawal_is_answered_once(
    two_replicas: tuple[Replica, Replica], postgres_url: str
) -> None:
    r1, r2 = two_replicas
    alice = await login(r1, unique("crash"))
    monitor = await asyncpg.connect(postgres_url)
    holder = await asyncpg.connect(postgres_url)
    async with httpx.AsyncClient(timeout=10) as http:
        top_up = await _money(http, r1, alice, "/api/account/top-up", "t", 1000)
        assert top_up.status_code == 200, top_up.text

        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE", alice.user_id)
        doomed = asyncio.create_task(_money(http, r1, alice, "/api/account/withdraw", "w", 300))
        await _until_a_query_waits_for_a_lock(monitor)
        r1.kill9()
        with pytest.raises(httpx.TransportError):
            await doomed
        await lock.rollback()

        retry = await _money(http, r2, alice, "/api/account/withdraw", "w", 300)
        assert retry.status_code == 200, retry.text
        assert retry.json() == {"balance_cents": 700}
        again = await _money(http, r2, alice, "/api/account/withdraw", "w", 300)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == {"balance_cents": 700}

    withdrawals = await monitor.fetchval(
        "SELECT count(*) FROM ledger_entries WHERE user_id = $1 AND kind = 'withdraw'",
        alice.user_id,
    )
    balance = await monitor.fetchval(
        "SELECT balance_cents FROM accounts WHERE user_id = $1", alice.user_id
    )
    await asyncio.gather(monitor.close(), holder.close())
    assert (withdrawals, balance) == (1, 700)
