"""``ledger=replicated`` through the API: replicas that each keep a copy of the ledger
and apply one replication log. Concurrent withdrawals through several replicas never
overdraw and charge once per key; a replica killed (SIGKILL) while writes flow comes
back, replays the log and holds the same balances as the others; Redis down is a 503
with Retry-After; ``/readyz`` says whether the copy has replayed the log."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from statelab.cluster.servers import RedisServer
from tests.chat.support import Login, Replica, login, sqlite_database, two_replicas_of, unique
from tests.support import register_and_login, share_login
from tests.web.conftest import ShopFactory

REPLICATED = {"place": {"ledger": "replicated"}}
PROBLEM = "application/problem+json"


async def _money(
    client: httpx.AsyncClient, headers: dict[str, str], path: str, key: str, cents: int
) -> httpx.Response:
    return await client.post(
        path, json={"amount_cents": cents}, headers={**headers, "Idempotency-Key": key}
    )


# ------------------------------------------------------------- replicas in one process


async def test_concurrent_withdrawals_through_three_replicas(shop: ShopFactory) -> None:
    replicas = [await shop("stateless", replica_id=f"r{i}", **REPLICATED) for i in (1, 2, 3)]
    headers = await register_and_login(replicas[0])
    for other in replicas[1:]:
        share_login(replicas[0], other)
    assert (await _money(replicas[0], headers, "/api/account/top-up", "t", 1000)).status_code == 200

    async def withdraw(i: int) -> httpx.Response:
        return await _money(replicas[i % 3], headers, "/api/account/withdraw", f"w{i}", 70)

    async def retry(i: int) -> httpx.Response:
        return await _money(replicas[i % 3], headers, "/api/account/withdraw", "same", 5)

    answers = await asyncio.gather(*(withdraw(i) for i in range(40)), *(retry(i) for i in range(9)))
    withdrawals, retries = answers[:40], answers[40:]
    assert {a.status_code for a in withdrawals} == {200, 409}
    paid = [a for a in withdrawals if a.status_code == 200]
    # 1000 cents: one 5-cent withdrawal (under one key, however often retried) and
    # 14 of 70 fit, wherever they land in the log's order.
    assert [a.status_code for a in retries] == [200] * 9
    assert [a.headers.get("Idempotent-Replayed") for a in retries].count(None) == 1
    assert len(paid) == 14
    for replica in replicas:
        await _until_balance(replica, "/api/account", headers, 1000 - 5 - 70 * 14)


async def _until_balance(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], want: int
) -> None:
    """Until ``url`` reads ``want``: a copy may trail the log by the apply lag."""
    for _ in range(250):
        r = await client.get(url, headers=headers)
        if r.json() == {"balance_cents": want}:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} stayed at {r.json()}, expected {want}")


async def test_an_order_and_its_receipt_reach_every_replica(shop: ShopFactory) -> None:
    place = {"ledger": "replicated", "jobs": "inprocess"}  # the receipt job runs in r1
    r1 = await shop("stateless", replica_id="r1", place=place)
    r2 = await shop("stateless", replica_id="r2", place=place)
    headers = await register_and_login(r1)
    share_login(r1, r2)
    assert (await _money(r1, headers, "/api/account/top-up", "t", 5000)).status_code == 200
    await r1.post("/api/cart/items", json={"item_id": 4, "quantity": 1}, headers=headers)
    paid = await r1.post(
        "/api/checkout",
        json={"expected_total_cents": 1100},
        headers={**headers, "Idempotency-Key": "c"},
    )
    assert paid.status_code == 201, paid.text
    order = paid.json()
    for _ in range(250):
        seen = (await r2.get(f"/api/orders/{order['id']}", headers=headers)).json()
        if seen["receipt"] is not None:
            break
        await asyncio.sleep(0.02)
    assert seen["receipt"] is not None, "the receipt job attached a receipt through the log"
    assert {k: v for k, v in seen.items() if k != "receipt"} == {
        k: v for k, v in order.items() if k not in ("receipt", "balance_cents")
    }
    mine = (await r1.get(f"/api/orders/{order['id']}", headers=headers)).json()
    assert mine["receipt"] == seen["receipt"]


async def test_readyz_names_the_ledger_copy(shop: ShopFactory) -> None:
    client = await shop("stateless", **REPLICATED)
    for _ in range(100):
        ready = await client.get("/readyz")
        if ready.status_code == 200:
            break
        await asyncio.sleep(0.05)
    assert ready.status_code == 200
    assert ready.json()["stores"]["ledger"] is True


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own (append-only file on), to stop and start again."""
    server = RedisServer(tmp_path / "redis")
    with server:
        yield server


async def test_redis_down_is_503_and_the_retry_after_it_is_applied_once(
    shop: ShopFactory, own_redis: RedisServer
) -> None:
    client = await shop("stateful", redis_url=own_redis.url, **REPLICATED)
    headers = await register_and_login(client)
    assert (await _money(client, headers, "/api/account/top-up", "t1", 500)).status_code == 200

    own_redis.stop()
    down = await _money(client, headers, "/api/account/top-up", "t2", 300)
    assert down.status_code == 503, down.text
    assert down.headers["content-type"] == PROBLEM
    assert "Retry-After" in down.headers
    # Reads answer from the replica's own copy while the log is out of reach.
    assert (await client.get("/api/account", headers=headers)).json() == {"balance_cents": 500}
    assert (await client.get("/readyz")).status_code == 503

    own_redis.start()
    own_redis.wait_ready()
    retried = await _money(client, headers, "/api/account/top-up", "t2", 300)
    assert retried.status_code == 200, retried.text
    assert retried.json() == {"balance_cents": 800}
    again = await _money(client, headers, "/api/account/top-up", "t2", 300)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == {"balance_cents": 800}


# ------------------------------------------------------------ replica processes, killed


@pytest.fixture
def two_replicas(tmp_path: Path, redis_url: str) -> Iterator[tuple[Replica, Replica]]:
    """Two ``statelab serve`` processes of the stateless profile, ledger replicated."""
    database = sqlite_database(tmp_path / "db")
    env = {"STATELAB_PLACE": "ledger=replicated"}
    with two_replicas_of(tmp_path, "stateless", database, redis_url, env) as pair:
        yield pair


class Teller:
    """One customer's writes, each retried with its key until some replica answers it
    (as a load balancer would retry); what was acknowledged, and by whom in which
    phase of the test, is remembered to audit with."""

    def __init__(
        self, who: Login, http: httpx.AsyncClient, replicas: list[Replica], phase: list[str]
    ) -> None:
        self.who, self.http, self.replicas, self.phase = who, http, replicas, phase
        self.expected = 0
        self.keys = itertools.count()
        self.served: list[tuple[str, str]] = []  # (phase, replica id) of each answer
        self.failed_over = 0  # attempts that found their replica gone

    async def write(self, path: str, cents: int, first: int) -> None:
        key = f"{path}-{next(self.keys)}"
        headers = {**self.who.headers, **self.who.csrf, "Idempotency-Key": key}
        for attempt in range(100):
            replica = self.replicas[(first + attempt) % len(self.replicas)]
            try:
                r = await self.http.post(
                    f"{replica.http}{path}", json={"amount_cents": cents}, headers=headers
                )
            except httpx.TransportError:
                self.failed_over += 1  # killed, or not back yet: the retry goes elsewhere
                continue
            if r.status_code in (200, 409):  # applied, or refused (too little money)
                self.served.append((self.phase[0], r.headers["X-Served-By"]))
                if r.status_code == 200:
                    self.expected += cents if path.endswith("top-up") else -cents
                return
            assert r.status_code == 503, r.text
            await asyncio.sleep(0.05)
        raise AssertionError(f"{path} with {key} was never answered")


async def test_a_killed_replica_comes_back_with_the_same_balances(
    two_replicas: tuple[Replica, Replica],
) -> None:
    r1, r2 = two_replicas
    rng, phase = random.Random(5), ["before"]
    async with httpx.AsyncClient(timeout=10) as http:
        tellers = [Teller(await login(r1, unique("kill")), http, [r1, r2], phase) for _ in range(4)]

        async def customer(teller: Teller) -> None:
            n = 0
            while phase[0] != "done":
                path = rng.choice(("/api/account/top-up", "/api/account/withdraw"))
                await teller.write(path, rng.randint(10, 300), first=n)
                n += 1

        flowing = asyncio.gather(*(customer(t) for t in tellers))
        await asyncio.sleep(0.5)
        phase[0] = "down"
        r2.kill9()  # while writes flow through both replicas
        r2.start()
        await asyncio.to_thread(r2.wait_ready, 30)
        phase[0] = "after"
        await asyncio.sleep(0.5)
        phase[0] = "done"
        await flowing

    served = [s for t in tellers for s in t.served]
    assert ("before", "r2") in served, "r2 answered writes before it was killed"
    assert ("after", "r2") in served, "r2 answered writes after its restart"
    assert sum(t.failed_over for t in tellers) > 0, "writes were flowing to r2 when it died"
    async with httpx.AsyncClient(timeout=10) as http:
        for teller in tellers:
            assert teller.expected >= 0
            for replica in (r1, r2):
                await _until_balance(
                    http, f"{replica.http}/api/account", teller.who.headers, teller.expected
                )
