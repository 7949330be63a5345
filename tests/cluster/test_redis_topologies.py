"""``statelab up --redis sentinel|cluster``: the shop runs on each, the status lists
every Redis process with its role, and any of them can be killed and started again
through the control API."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from statelab.cluster.client import ClusterError, format_status
from statelab.cluster.supervisor import ClusterOptions
from tests.cluster.conftest import RunningCluster, ShopperFactory, start_cluster


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"redis_topology": "ring"}, "--redis must be one of single, sentinel, cluster"),
        ({"redis_wait": 1}, "--redis-wait"),  # a lone server has no replica to wait for
        ({"redis_topology": "sentinel", "redis_wait": 3}, "--redis-wait: 0 to 2"),
        ({"redis_topology": "cluster", "redis_delay_proxy": True}, "one Redis"),
    ],
)
def test_redis_options_are_refused_saying_why(options: dict[str, Any], said: str) -> None:
    with pytest.raises(ClusterError, match=said):
        ClusterOptions(**options).check()


def roles(status: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p.get("role", "") for p in status["redis"]["processes"]}


async def add_until_ok(shopper: Any, within: float = 20.0) -> tuple[float, set[int]]:
    """Seconds until a cart add succeeds again, and every status seen meanwhile."""
    began, seen = time.monotonic(), set()
    while True:
        answer = await shopper.add(1)
        seen.add(answer.status_code)
        if answer.status_code == 200:
            return time.monotonic() - began, seen
        assert time.monotonic() - began < within, f"never writable again: {seen}"
        await asyncio.sleep(0.1)


async def test_sentinel_failover_through_the_control_api(
    tmp_path: Path, shoppers: ShopperFactory
) -> None:
    cluster = start_cluster(tmp_path / "up", "stateless", 2, "--redis", "sentinel")
    try:
        status = cluster.status()
        assert status["redis"]["topology"] == "sentinel"
        assert status["redis"]["url"].startswith("redis+sentinel://")
        text = format_status(status)  # what `statelab cluster status` prints
        assert "redis+sentinel://" in text and "sentinel-3" in text and " primary" in text
        assert (
            sorted(roles(status).values()) == ["primary", "replica", "replica"] + ["sentinel"] * 3
        )
        (alice,) = await shoppers(cluster, 1)
        assert (await alice.add(1)).status_code == 200
        primary = status["redis"]["name"]
        assert cluster.control.kill(primary)["role"] == "primary"
        took, seen = await add_until_ok(alice)
        assert seen <= {200, 503} and took < 15  # unavailable meanwhile, never a 500
        promoted = cluster.status()["redis"]["name"]
        assert promoted != primary and roles(cluster.status())[primary] == "down"
        assert (await alice.cart())[1] == 2
        cluster.control.start(primary)  # the old primary rejoins as a replica
        cluster.wait_for(lambda s: roles(s)[primary] == "replica", 15)
        with pytest.raises(ClusterError, match="by name"):
            cluster.control.restart_redis()
    finally:
        cluster.stop()


async def test_cluster_primary_killed_and_replaced(
    tmp_path: Path, shoppers: ShopperFactory
) -> None:
    cluster: RunningCluster = start_cluster(tmp_path / "up", "stateless", 2, "--redis", "cluster")
    try:
        status = cluster.status()
        assert status["redis"]["topology"] == "cluster"
        primaries = [p for p in status["redis"]["processes"] if p.get("role") == "primary"]
        assert len(primaries) == 3 and all(p["slots"] > 5000 for p in primaries)
        (bob,) = await shoppers(cluster, 1)
        assert (await bob.add(1)).status_code == 200
        victim = primaries[0]["name"]
        cluster.control.kill(victim)
        took, seen = await add_until_ok(bob)
        assert seen <= {200, 503} and took < 15
        cluster.wait_for(lambda s: roles(s)[victim] == "down" and
                         sum(r == "primary" for r in roles(s).values()) == 3, 15)  # fmt: skip
        assert sum(cluster.control.redis_stats()["commandstats"].values()) > 0
        cluster.control.start(victim)
        cluster.wait_for(lambda s: roles(s)[victim] == "replica", 15)
    finally:
        cluster.stop()
