"""Client CPU per Redis command: the request path's ``RedisLink`` against redis-py
(and coredis and valkey-glide, when they are installed), on one server, behind
Sentinel, and on a Redis Cluster.

Not a test: it prints numbers for the docs, it asserts nothing. Run it on a quiet
machine (the Redis servers run in their own processes; only this process's CPU
time is counted, every thread of it, so a client core in Rust counts too)::

    .venv/bin/python tests/redis/measure.py [--callers 32] [--commands 20000]

Each client answers the same workload: ``callers`` tasks each sending HGETALL of a
small hash (a session) until ``commands`` were sent, after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.sentinel import Sentinel

from statelab.cluster.redis import (
    PRIMARY_NAME,
    ClusterRedis,
    RedisTopology,
    SentinelRedis,
    SingleRedis,
)
from statelab.state.redislink import RedisLink

KEY = "{u1}:bench"
Call = Callable[[], Awaitable[Any]]
Opened = contextlib.AbstractAsyncContextManager[Call]


@contextlib.asynccontextmanager
async def redislink(url: str) -> AsyncIterator[Call]:
    link = RedisLink.from_url(url)
    try:
        yield lambda: link.call("HGETALL", KEY)
    finally:
        await link.aclose()


@contextlib.asynccontextmanager
async def redis_py(client: Any) -> AsyncIterator[Call]:
    if isinstance(client, RedisCluster):
        await client.initialize()  # before the callers: its first command races otherwise
    try:
        yield lambda: client.hgetall(KEY)
    finally:
        await client.aclose()


def redis_py_for(topology: RedisTopology) -> Opened:
    first = topology.processes[0]
    if isinstance(topology, SingleRedis):
        return redis_py(Redis(port=first.port, max_connections=200, decode_responses=True))
    options: dict[str, Any] = {"max_connections": 200, "decode_responses": True}
    if isinstance(topology, SentinelRedis):
        sentinels = [("127.0.0.1", s.port) for s in topology.sentinels]
        sentinel = Sentinel(sentinels)  # type: ignore[no-untyped-call]
        return redis_py(sentinel.master_for(PRIMARY_NAME, **options))
    nodes = [ClusterNode("127.0.0.1", n.port) for n in topology.nodes]
    return redis_py(RedisCluster(startup_nodes=nodes, **options))


@contextlib.asynccontextmanager
async def coredis_for(topology: RedisTopology) -> AsyncIterator[Call]:
    import coredis  # type: ignore[import-not-found]

    first = topology.processes[0]
    client: Any
    if isinstance(topology, SingleRedis):
        client = coredis.Redis(port=first.port, decode_responses=True)
    elif isinstance(topology, SentinelRedis):
        sentinels = [
            coredis.connection.TCPLocation("127.0.0.1", s.port) for s in topology.sentinels
        ]
        sentinel = coredis.Sentinel(sentinels, decode_responses=True)
        async with contextlib.AsyncExitStack() as stack:
            if hasattr(sentinel, "__aenter__"):
                sentinel = await stack.enter_async_context(sentinel)
            primary = sentinel.primary_for(PRIMARY_NAME)
            async with primary:
                yield lambda: primary.hgetall(KEY)
        return
    else:
        nodes = [{"host": "127.0.0.1", "port": n.port} for n in topology.nodes]
        client = coredis.RedisCluster(startup_nodes=nodes, decode_responses=True)
    async with contextlib.AsyncExitStack() as stack:
        if hasattr(client, "__aenter__"):
            client = await stack.enter_async_context(client)
        yield lambda: client.hgetall(KEY)


@contextlib.asynccontextmanager
async def glide_for(topology: RedisTopology) -> AsyncIterator[Call]:
    import glide  # type: ignore[import-not-found]

    if isinstance(topology, SentinelRedis):
        raise RuntimeError("valkey-glide has no Sentinel support")
    if isinstance(topology, SingleRedis):
        address = [glide.NodeAddress("127.0.0.1", topology.processes[0].port)]
        client = await glide.GlideClient.create(glide.GlideClientConfiguration(address))
    else:
        addresses = [glide.NodeAddress("127.0.0.1", n.port) for n in topology.nodes]
        config = glide.GlideClusterClientConfiguration(addresses)
        client = await glide.GlideClusterClient.create(config)
    try:
        yield lambda: client.hgetall(KEY)
    finally:
        await client.close()


async def cpu_per_command(opened: Opened, callers: int, commands: int) -> float:
    """Microseconds of this process's CPU per command, ``callers`` at a time."""
    async with opened as call:
        each = max(1, commands // callers)

        async def caller(n: int) -> None:
            for _ in range(n):
                await call()

        await asyncio.gather(*(caller(max(1, each // 10)) for _ in range(callers)))  # warm up
        began = time.process_time()
        await asyncio.gather(*(caller(each) for _ in range(callers)))
        return (time.process_time() - began) / (each * callers) * 1e6


async def measure_all(topology: RedisTopology, url: str, callers: int, commands: int) -> None:
    seed = Redis.from_url(url) if isinstance(topology, SingleRedis) else None
    link = RedisLink.from_url(url)
    await link.call("HSET", KEY, "uid", "1", "user", "ann", "csrf", "x" * 32)
    await link.aclose()
    if seed is not None:
        await seed.aclose()
    clients: dict[str, Callable[[], Opened]] = {
        "RedisLink": lambda: redislink(url),
        "redis-py": lambda: redis_py_for(topology),
        "coredis": lambda: coredis_for(topology),
        "valkey-glide": lambda: glide_for(topology),
    }
    for name, opened in clients.items():
        try:
            micros = await cpu_per_command(opened(), callers, commands)
        except Exception as exc:  # an optional client missing or refusing the topology
            print(f"  {topology.kind:<9} {name:<13} n/a ({type(exc).__name__}: {exc})"[:140])
            continue
        print(f"  {topology.kind:<9} {name:<13} {micros:7.1f} µs of client CPU per command")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--commands", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="statelab-measure-") as tmp:
        for topology in (
            SingleRedis(Path(tmp) / "single", "off"),
            SentinelRedis(Path(tmp) / "sentinel", "off"),
            ClusterRedis(Path(tmp) / "cluster", "off"),
        ):
            topology.start()
            try:
                asyncio.run(measure_all(topology, topology.url, args.callers, args.commands))
            finally:
                topology.stop()


if __name__ == "__main__":
    main()
