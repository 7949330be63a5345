"""Redis behind Sentinel: the request-path link and the redis-py client find the
primary through the sentinels and follow a failover, with 503s (never 500s) while
no primary is writable."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from statelab.cluster.redis import RedisNode, SentinelRedis, ask
from statelab.domain.errors import Unavailable
from statelab.state.errors import store_guard
from statelab.state.redisclient import redis_client
from statelab.state.redislink import RedisLink, Script, _Connection, _fixed

DOWN = (ConnectionError, TimeoutError, RedisConnectionError)


async def until_ok(call: Callable[[], Awaitable[Any]], within: float = 20.0) -> float:
    """Seconds until ``call`` succeeds; it may only fail as "Redis unavailable"."""
    began = time.monotonic()
    while True:
        try:
            await call()
            return time.monotonic() - began
        except DOWN:
            if time.monotonic() - began > within:
                raise
            await asyncio.sleep(0.1)


async def test_the_link_follows_a_failover_and_keeps_replicated_writes(
    own_sentinel: SentinelRedis,
) -> None:
    sentinel = own_sentinel
    link = RedisLink.from_url(sentinel.url)
    client = redis_client(sentinel.url, decode_responses=True, socket_timeout=1.0)
    try:
        old = sentinel.primary()
        assert old is not None
        await link.call("SET", "kept", "1")
        assert await link.call("WAIT", 2, 2000) == 2  # on both replicas before the kill
        old.kill(signal.SIGKILL)
        with pytest.raises(Unavailable), store_guard("redis"):
            await link.call("SET", "during", "x")
        took = await until_ok(lambda: link.call("SET", "after", "1"))
        assert took < 15
        new = sentinel.primary()
        assert new is not None and new is not old
        assert await link.call("GET", "kept") == "1"
        await until_ok(lambda: client.get("kept"))
        assert await client.get("after") == "1"  # the redis-py client found it too
    finally:
        await link.aclose()
        await client.aclose()


async def test_a_switchover_moves_the_link_to_the_new_primary(sentinel: SentinelRedis) -> None:
    """SENTINEL FAILOVER demotes the old primary while it still runs: the link must not
    stay on it (its writes would be refused with READONLY)."""
    link = RedisLink.from_url(sentinel.url)
    try:
        old = sentinel.primary()
        assert old is not None
        assert await link.call("SET", "a", "1") == "OK"
        assert _switch_over(sentinel) == "OK"
        await until_ok(_written_elsewhere(link, sentinel, old.port))
        assert old.alive and old.role()["role"] == "replica"
    finally:
        await link.aclose()


def _switch_over(topo: SentinelRedis, within: float = 30.0) -> Any:
    """SENTINEL FAILOVER, asked again while the sentinels have no replica they deem fit
    yet (NOGOODSLAVE: each learns a replica's state from its INFO every ten seconds, so
    just after an earlier failover in this module they may not) or one is under way."""
    deadline = time.monotonic() + within
    while True:
        answer = ask(topo.sentinels[0].port, "SENTINEL", "FAILOVER", "statelab")
        busy = isinstance(answer, Exception) and str(answer).startswith(("NOGOODSLAVE", "INPROG"))
        if not busy or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def _written_elsewhere(link: RedisLink, topo: SentinelRedis, old: int) -> Callable[[], Any]:
    async def write() -> None:
        await link.call("SET", "b", "2")
        primary = topo.primary()
        if primary is None or primary.port == old:
            raise ConnectionError("the old primary still takes writes")

    return write


async def test_a_primary_demoted_under_the_link_is_left(tmp_path: Path) -> None:
    """READONLY from the server the link writes to: the link drops it, answers
    "unavailable" (503) and asks where the primary is on the next command."""
    a = RedisNode(tmp_path, "a", persistence="off")
    b = RedisNode(tmp_path, "b", persistence="off")
    where = [a.port]

    async def locate() -> tuple[str, int]:
        return "127.0.0.1", where[0]

    connection = _Connection(locate, [], connect_timeout=1, timeout=2, primary_only=True)
    with a, b:
        (reply,) = await connection.send([("SET", "k", "1")], 1)
        assert reply == "OK"
        ask(a.port, "REPLICAOF", "127.0.0.1", str(b.port))
        where[0] = b.port
        link = RedisLink.from_url(f"redis://127.0.0.1:{a.port}/0")
        with pytest.raises(Unavailable), store_guard("redis"):  # READONLY is a 503
            await link.call("SET", "k", "2")
        await link.aclose()
        (refused,) = await connection.send([("SET", "k", "2")], 1)
        assert str(refused).startswith("READONLY")
        (reply,) = await connection.send([("SET", "k", "3")], 1)  # reconnected, to b
        assert reply == "OK" and connection.address == ("127.0.0.1", b.port)
        await connection.aclose()


async def test_a_replica_is_never_taken_for_the_primary(sentinel: SentinelRedis) -> None:
    replica = next(n for n in sentinel.nodes if n.role()["role"] == "replica")
    connection = _Connection(
        _fixed(("127.0.0.1", replica.port)), [], connect_timeout=1, timeout=2, primary_only=True
    )
    with pytest.raises(ConnectionError, match="not the primary"):
        await connection.send([("PING",)], 1)
    await connection.aclose()


async def test_no_sentinel_answering_is_unavailable(closed_port: int) -> None:
    link = RedisLink.from_url(f"redis+sentinel://127.0.0.1:{closed_port}/statelab")
    with pytest.raises(Unavailable, match="redis"), store_guard("redis"):
        await link.call("PING")
    await link.aclose()


async def test_an_unknown_primary_name_is_unavailable(sentinel: SentinelRedis) -> None:
    link = RedisLink.from_url(sentinel.url.replace("/statelab/", "/nobody/"))
    with pytest.raises(ConnectionError, match="nobody"):
        await link.call("PING")
    await link.aclose()


_INCR = Script.of("return redis.call('INCR', KEYS[1])")


async def test_wait_acknowledges_a_write_only_once_the_replicas_have_it(
    sentinel: SentinelRedis,
) -> None:
    link = RedisLink.from_url(sentinel.url, wait_replicas=2, wait_timeout_ms=2000)
    try:
        assert await until_ok(lambda: link.run(_INCR, ["waited"], [])) < 15
        assert await link.batch([("SET", "tx", "1")], transaction=True) == ["OK"]
        replicas = [n for n in sentinel.nodes if n.alive and n.role()["role"] == "replica"]
        assert len(replicas) == 2
        assert all(ask(r.port, "GET", "tx") == "1" for r in replicas)
    finally:
        await link.aclose()


async def test_a_write_no_replica_confirms_is_unavailable(redis_url: str) -> None:
    """A lone server has no replica: WAIT 1 times out, so the write is a 503, not
    acknowledged; a refused script is still its own error."""
    link = RedisLink.from_url(redis_url, wait_replicas=1, wait_timeout_ms=50)
    try:
        with pytest.raises(Unavailable), store_guard("redis"):
            await link.run(_INCR, ["alone"], [])
        with pytest.raises(Unavailable), store_guard("redis"):
            await link.batch([("SET", "tx", "1")], transaction=True)
        failing = Script.of("return redis.error_reply('refused')")
        with pytest.raises(ResponseError, match="refused"):
            await link.run(failing, ["alone"], [])
    finally:
        await link.aclose()
