"""Whole clusters (real HAProxy, Redis and replica processes) broken on purpose.

Every load loop is bounded in requests and seconds, and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field

import httpx
import pytest

from statelab.cluster.servers import ephemeral_port_range
from tests.cluster.conftest import RunningCluster, Shopper, ShopperFactory

pytestmark = pytest.mark.slow


@dataclass
class Load:
    """What a bounded load loop saw."""

    acked: Counter[int] = field(default_factory=Counter)  # item id -> acknowledged adds
    failed: list[str] = field(default_factory=list)
    failed_reads: list[str] = field(default_factory=list)
    served_by: Counter[str] = field(default_factory=Counter)
    requests: int = 0


async def attempt(
    request: Awaitable[httpx.Response], what: str, failures: list[str]
) -> httpx.Response | None:
    """The response, with a non-200 noted in ``failures``; None if the request failed."""
    try:
        r = await request
    except httpx.TransportError as exc:
        failures.append(f"{what}: {exc!r}")
        return None
    if r.status_code != 200:
        failures.append(f"{what}: {r.status_code}")
    return r


async def add_items(
    shopper: Shopper, items: list[int], load: Load, seconds: float, max_requests: int
) -> None:
    """Add one of ``items`` at a time, round the menu, until a bound is hit."""
    deadline = time.monotonic() + seconds
    while load.requests < max_requests and time.monotonic() < deadline:
        item = items[load.requests % len(items)]
        load.requests += 1
        r = await attempt(shopper.add(item), f"add {item}", load.failed)
        if r is None:
            continue
        if r.status_code == 200:
            load.acked[item] += 1
            load.served_by[r.headers["X-Served-By"]] += 1
        await asyncio.sleep(0.01)


async def read_loop(shopper: Shopper, load: Load, done: asyncio.Event, max_requests: int) -> None:
    """Idempotent reads (cart, menu) until ``done`` is set or a bound is hit."""
    paths = ["/api/cart", "/api/menu", "/api/auth/me"]
    while not done.is_set() and load.requests < max_requests:
        path = paths[load.requests % len(paths)]
        load.requests += 1
        r = await attempt(shopper.get(path), f"GET {path}", load.failed_reads)
        if r is not None:
            load.served_by[r.headers.get("X-Served-By", "-")] += 1
        await asyncio.sleep(0.02)


async def menu_ids(shopper: Shopper) -> list[int]:
    r = await shopper.get("/api/menu")
    return [item["id"] for item in r.json()["items"]]


async def test_stateless_kill_9_loses_no_acknowledged_item(
    stateless_cluster: RunningCluster, shoppers: ShopperFactory
) -> None:
    cluster = stateless_cluster
    people = await shoppers(cluster, 3)
    items = await menu_ids(people[0])
    loads = [Load() for _ in people]

    async def chaos() -> None:
        await asyncio.sleep(0.8)
        await asyncio.to_thread(cluster.control.kill, "r2")

    await asyncio.gather(
        *(add_items(p, items, load, 3.5, 150) for p, load in zip(people, loads, strict=True)),
        chaos(),
    )
    for person, load in zip(people, loads, strict=True):
        cart = await person.cart()
        lost = {
            item: n - cart.get(item, 0) for item, n in load.acked.items() if cart.get(item, 0) < n
        }
        assert lost == {}, f"acknowledged items lost: {lost}"
        # A failed add may still have been applied (the replica died before answering).
        assert sum(cart.values()) <= load.acked.total() + len(load.failed)
        assert (await person.get("/api/auth/me")).status_code == 200
    assert sum(load.served_by["r2"] for load in loads) > 0, (
        "r2 never served: the kill proved nothing"
    )
    down = cluster.kill_to_down_seconds("r2")
    failed = [f for load in loads for f in load.failed]
    print(f"\nstateless: kill -9 -> DOWN {down:.2f} s; failed adds {len(failed)}/"
          f"{sum(load.requests for load in loads)}: {failed}")  # fmt: skip
    assert down < 2.0
    cluster.control.start("r2")
    cluster.all_up()


async def test_stateful_kill_9_loses_the_sessions_pinned_to_that_replica(
    stateful_cluster: RunningCluster, shoppers: ShopperFactory
) -> None:
    cluster = stateful_cluster
    people = await shoppers(cluster, 6)
    for person in people:
        r = await person.add(1, 2)
        assert r.status_code == 200
        assert r.headers["X-Served-By"] == person.served_by, "the cookie pins each browser"
    victim = people[0].served_by
    assert victim is not None
    assert any(p.served_by != victim for p in people), "everyone landed on one replica"
    await asyncio.to_thread(cluster.control.kill, victim)
    load, done = Load(), asyncio.Event()
    readers = [asyncio.create_task(read_loop(p, load, done, 400)) for p in people]
    await asyncio.sleep(2.0)
    done.set()
    await asyncio.gather(*readers)
    for person in people:
        me = await person.get("/api/auth/me")
        cart = await person.cart()
        if person.served_by == victim:
            # The expected failure of the stateful design: session and cart died with r.
            assert me.status_code == 401
            assert cart == {}
        else:
            assert me.status_code == 200
            assert me.headers["X-Served-By"] == person.served_by
            assert cart == {1: 2}
    down = cluster.kill_to_down_seconds(victim)
    print(f"\nstateful: kill -9 {victim} -> DOWN {down:.2f} s; "
          f"failed reads {len(load.failed_reads)}/{load.requests}")  # fmt: skip
    assert down < 2.0


async def test_rolling_restart_fails_no_idempotent_request(
    stateless_cluster: RunningCluster, shoppers: ShopperFactory
) -> None:
    cluster = stateless_cluster
    before = {r["id"]: r["pid"] for r in cluster.status()["replicas"]}
    people = await shoppers(cluster, 3)
    items = await menu_ids(people[0])
    reads, writes, done = Load(), Load(), asyncio.Event()
    readers = [asyncio.create_task(read_loop(p, reads, done, 3000)) for p in people[:2]]
    writer = asyncio.create_task(add_items(people[2], items, writes, 60.0, 500))
    result = await asyncio.to_thread(cluster.control.rolling_restart)
    done.set()
    writer.cancel()
    await asyncio.gather(*readers)
    await asyncio.gather(writer, return_exceptions=True)
    assert reads.failed_reads == []
    assert reads.requests > 100, "too little load to prove anything"
    assert set(reads.served_by) >= set(before), "every replica served during the restart"
    after = {r["id"]: r["pid"] for r in cluster.status()["replicas"]}
    assert all(after[rid] != pid for rid, pid in before.items())
    cart = await people[2].cart()
    assert all(cart.get(item, 0) >= n for item, n in writes.acked.items())
    print(f"\nrolling restart: {result['seconds']} s, failed reads 0/{reads.requests}, "
          f"failed adds {len(writes.failed)}/{writes.requests}")  # fmt: skip


async def test_an_added_replica_serves_within_seconds(
    stateless_cluster: RunningCluster, shoppers: ShopperFactory
) -> None:
    cluster = stateless_cluster
    people = await shoppers(cluster, 2)
    load, done = Load(), asyncio.Event()
    readers = [asyncio.create_task(read_loop(p, load, done, 2000)) for p in people]
    added = await asyncio.to_thread(cluster.control.add)
    new = added["id"]
    started = time.monotonic()
    while load.served_by[new] == 0 and time.monotonic() - started < 5.0:
        await asyncio.sleep(0.05)
    first_request_after = time.monotonic() - started
    await asyncio.to_thread(cluster.control.remove, new)
    done.set()
    await asyncio.gather(*readers)
    assert load.served_by[new] > 0, f"{new} got no request within 5 s"
    assert load.failed_reads == []
    assert new not in {r["id"] for r in cluster.status()["replicas"]}
    print(f"\nadd: {new} served its first request {first_request_after:.2f} s after it was added")


def test_up_with_port_0_publishes_the_ports_it_chose(stateless_cluster: RunningCluster) -> None:
    state = json.loads((stateless_cluster.run_dir / "cluster.json").read_text())
    shop = int(state["shop_url"].rsplit(":", 1)[1])
    control = int(state["control_url"].rsplit(":", 1)[1])
    servers = {name: p["port"] for name, p in state["processes"].items() if "port" in p}
    assert servers["haproxy"] == shop == stateless_cluster.status()["haproxy"]["port"]
    low, high = ephemeral_port_range()
    for port in (shop, control, *servers.values()):
        assert port > 1024 and not low <= port <= high, f"{port}: an outgoing connection's port"
    assert httpx.get(state["shop_url"] + "/api/menu").status_code == 200


def test_a_replica_whose_port_was_taken_restarts_on_another(
    stateless_cluster: RunningCluster,
) -> None:
    cluster = stateless_cluster
    old = next(r["port"] for r in cluster.status()["replicas"] if r["id"] == "r3")
    cluster.control.kill("r3")
    with _occupy(old):
        # Seen DOWN first: UP again then takes good checks at the new address.
        cluster.wait_for(
            lambda s: any(r["id"] == "r3" and r["state"] == "down" for r in s["replicas"])
        )
        moved = cluster.control.start("r3")
        cluster.all_up()
    assert moved["port"] != old
    state = json.loads((cluster.run_dir / "cluster.json").read_text())
    assert state["processes"]["r3"]["port"] == moved["port"]
    assert any(
        e["event"] == "process.moved" and e["target"] == "r3" and e["was"] == old
        for e in cluster.events()
    )
    # HAProxy's slot follows the replica to its new port.
    served = Counter(
        httpx.get(cluster.shop_url + "/api/menu").headers["X-Served-By"] for _ in range(12)
    )
    assert served["r3"] > 0, served


def _occupy(port: int, within: float = 5.0) -> socket.socket:
    """A listener on ``port`` as soon as the process that had it let go."""
    deadline = time.monotonic() + within
    while True:
        try:
            return socket.create_server(("127.0.0.1", port))
        except OSError:
            assert time.monotonic() < deadline, f"port {port} never came free"
            time.sleep(0.05)
