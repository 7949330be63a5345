"""The multiplexed Redis connection of the request path, against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.exceptions import ResponseError

from statelab.cluster.servers import RedisServer
from statelab.domain.errors import Unavailable
from statelab.state.errors import store_guard
from statelab.state.redislink import RedisLink, Script, _checked


@pytest.fixture
async def link(redis_url: str) -> AsyncIterator[RedisLink]:
    link = RedisLink.from_url(redis_url)
    yield link
    await link.aclose()


async def test_concurrent_callers_each_get_their_own_reply(link: RedisLink) -> None:
    await link.batch([("SET", f"k{i}", str(i)) for i in range(500)])
    replies = await asyncio.gather(*(link.call("GET", f"k{i}") for i in range(500)))
    assert replies == [str(i) for i in range(500)]


async def test_transaction_returns_exec_results(link: RedisLink) -> None:
    results = await link.batch(
        [("DEL", "h"), ("HSET", "h", "a", "1", "b", "2"), ("HGETALL", "h")], transaction=True
    )
    assert results[1:] == [2, ["a", "1", "b", "2"]]


async def test_error_reply_raises_and_the_stream_stays_in_step(link: RedisLink) -> None:
    await link.call("SET", "s", "text")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await link.call("HGETALL", "s")
    with pytest.raises(ResponseError):  # a runtime error inside MULTI/EXEC
        await link.batch([("INCR", "s"), ("SET", "t", "1")], transaction=True)
    assert await link.call("GET", "s") == "text"
    assert await link.call("GET", "t") == "1"  # EXEC ran the other command


async def test_script_is_loaded_again_after_a_flush(link: RedisLink) -> None:
    script = Script.of("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    await link.call("DEL", "n")
    assert await link.run(script, ["n"], [2]) == 2
    await link.call("SCRIPT", "FLUSH")
    assert await link.run(script, ["n"], [3]) == 5


async def test_a_cancelled_caller_does_not_shift_the_replies(link: RedisLink) -> None:
    await link.call("SET", "x", "1")
    slow = asyncio.ensure_future(link.call("GET", "x"))
    await asyncio.sleep(0)  # queued, maybe written, not answered yet
    slow.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await slow
    assert await link.call("SET", "y", "2") == "OK"
    assert await link.call("GET", "x") == "1"


async def test_a_stuck_redis_times_out_then_the_link_reconnects(redis_url: str) -> None:
    link = RedisLink.from_url(redis_url, timeout=0.3)
    admin = RedisLink.from_url(redis_url)
    try:
        await link.call("SET", "z", "1")
        await admin.call("CLIENT", "PAUSE", 1000, "ALL")  # Redis answers nobody for 1 s
        with pytest.raises(TimeoutError):
            await link.call("GET", "z")
        await asyncio.sleep(1.0)
        assert await link.call("GET", "z") == "1"
    finally:
        await link.aclose()
        await admin.aclose()


async def test_redis_down_is_unavailable_and_a_restart_is_picked_up(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    redis.wait_ready()
    link = RedisLink.from_url(redis.url, connect_timeout=0.5)
    try:
        await link.call("SET", "kept", "yes")
        await link.call("BGREWRITEAOF")
        await asyncio.sleep(0.5)
        redis.kill(signal.SIGKILL)
        await asyncio.sleep(0.1)
        with pytest.raises(Unavailable), store_guard("redis"):
            await link.call("GET", "kept")
        with pytest.raises(Unavailable), store_guard("redis"):  # refused while down
            await link.call("GET", "kept")
        redis.start()
        redis.wait_ready()
        assert await link.call("GET", "kept") == "yes"
    finally:
        await link.aclose()
        redis.stop()


async def test_url_password_and_database_are_used(redis_url: str) -> None:
    plain = RedisLink.from_url(redis_url)
    other_db = RedisLink.from_url(redis_url.rsplit("/", 1)[0] + "/3")
    wrong = RedisLink.from_url(redis_url.replace("redis://", "redis://:nope@"))
    try:
        await plain.call("SET", "where", "db0")
        await other_db.call("SET", "where", "db3")
        assert await plain.call("GET", "where") == "db0"
        assert await other_db.call("GET", "where") == "db3"
        with pytest.raises(ConnectionError, match="AUTH"):  # no password set on this server
            await wrong.call("PING")
    finally:
        for link in (plain, other_db, wrong):
            await link.aclose()
    with pytest.raises(ValueError, match="redis://"):
        RedisLink.from_url("rediss://127.0.0.1:1/0")


def test_a_redis_still_loading_is_unavailable_not_an_error() -> None:
    """A restarted Redis answers LOADING while it replays its AOF: that is a 503."""
    loading = ResponseError("LOADING Redis is loading the dataset in memory")
    with pytest.raises(Unavailable, match="redis"), store_guard("redis"):
        _checked(loading)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        _checked(ResponseError("WRONGTYPE Operation against a key holding the wrong kind"))
    assert _checked("OK") == "OK"
