"""Redis Cluster: the request-path link routes each command to its slot's primary,
follows MOVED and ASK, keeps tagged transactions and scripts in one slot, and while
a primary is down only the keys of its slots are unavailable."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import RedisCluster
from redis.crc import key_slot

from statelab.cluster.redis import ClusterRedis, RedisNode, ask
from statelab.domain.errors import Unavailable
from statelab.state import keys, redislink
from statelab.state.errors import store_guard
from statelab.state.jobs import JobPolicy, QueueJobs, make_saq_queue
from statelab.state.redisclient import redis_client
from statelab.state.redislink import RedisLink, Script
from statelab.state.session import Lifetimes, RedisSessions


@pytest.fixture
async def link(shared_cluster: ClusterRedis) -> AsyncIterator[RedisLink]:
    link = RedisLink.from_url(shared_cluster.url)
    yield link
    await link.aclose()


def owner(topology: ClusterRedis, key: str) -> RedisNode:
    """The primary that serves ``key``'s slot now."""
    slot = key_slot(key.encode())
    for node in topology.primaries():
        for start, end, primary, *_ in ask(node.port, "CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(n for n in topology.nodes if n.port == primary[1])
    raise AssertionError(f"no primary serves slot {slot}")


def node_id(node: RedisNode) -> str:
    return str(ask(node.port, "CLUSTER", "MYID"))


async def test_keys_spread_over_every_primary(
    link: RedisLink, shared_cluster: ClusterRedis
) -> None:
    await link.batch([("SET", f"spread:{i}", str(i)) for i in range(300)])
    values = await asyncio.gather(*(link.call("GET", f"spread:{i}") for i in range(300)))
    assert values == [str(i) for i in range(300)]
    sizes = [int(ask(n.port, "DBSIZE")) for n in shared_cluster.primaries()]
    assert len(sizes) == 3 and all(size > 0 for size in sizes)


async def test_tagged_transactions_and_scripts_stay_in_one_slot(link: RedisLink) -> None:
    a, b = "{u7}:a", "{u7}:b"
    assert await link.batch([("SET", a, "1"), ("SET", b, "2"), ("MGET", a, b)],
                            transaction=True) == ["OK", "OK", ["1", "2"]]  # fmt: skip
    swap = Script.of(
        "local v = redis.call('GET', KEYS[1]) "
        "redis.call('SET', KEYS[1], redis.call('GET', KEYS[2])) "
        "redis.call('SET', KEYS[2], v) return v"
    )
    assert await link.run(swap, [a, b], []) == "1"
    assert await link.call("MGET", a, b) == ["2", "1"]
    with pytest.raises(ValueError, match="hash slots"):
        await link.batch([("SET", "x", "1"), ("SET", "y", "2")], transaction=True)
    assert await link.batch([("SET", "x", "1"), ("GET", "x"), ("SET", "y", "2")]) == [
        "OK", "1", "OK"
    ]  # fmt: skip


async def test_a_user_s_sessions_work_on_a_cluster(link: RedisLink) -> None:
    """Every session transaction (issue, revoke, logout-all) touches one slot."""
    sessions = RedisSessions(link, Lifetimes(idle=600, absolute=3600))
    first = await sessions.issue(42, "ann", "phone")
    second = await sessions.issue(42, "ann", "laptop")
    assert key_slot(keys.session(first.credential).encode()) == key_slot(
        keys.user_sessions(42).encode()
    )
    assert (await sessions.resolve(first.credential)) == first.session
    assert len(await sessions.list_for_user(42)) == 2
    await sessions.revoke(first.session)
    assert await sessions.resolve(first.credential) is None
    assert await sessions.revoke_all(42) == 1
    assert await sessions.resolve(second.credential) is None


async def test_moved_and_ask_are_followed(link: RedisLink, shared_cluster: ClusterRedis) -> None:
    key = "{migrating}:k"
    slot = key_slot(key.encode())
    await link.call("SET", key, "v")
    source = owner(shared_cluster, key)
    target = next(n for n in shared_cluster.primaries() if n is not source)
    ask(target.port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", node_id(source))
    ask(source.port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", node_id(target))
    ask(source.port, "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", key)
    assert await link.call("GET", key) == "v"  # the source answers ASK: asked at the target
    for node in shared_cluster.primaries():
        ask(node.port, "CLUSTER", "SETSLOT", str(slot), "NODE", node_id(target))
    assert await link.call("GET", key) == "v"  # the source answers MOVED
    assert await link.call("SET", key, "w") == "OK"
    assert ask(target.port, "GET", key) == "w"


async def test_while_a_primary_is_down_only_its_slots_are_unavailable(
    cluster: ClusterRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slot maps read at most every 3 s: a command that waited for one would take that long.
    monkeypatch.setattr(redislink, "REFRESH_INTERVAL", 3.0)
    link = RedisLink.from_url(cluster.url)
    client = redis_client(cluster.url, decode_responses=True, socket_timeout=1.0)
    try:
        await link.batch([("SET", f"k{i}", str(i)) for i in range(100)])
        assert await client.ping()
        victim = slot_zero_owner(cluster)  # the node a keyless command is tried on first
        mine = next(f"k{i}" for i in range(100) if owner(cluster, f"k{i}") is victim)
        elsewhere = next(f"k{i}" for i in range(100) if owner(cluster, f"k{i}") is not victim)
        ask(victim.port, "WAIT", "1", "2000")  # its replica has every write
        assert isinstance(client, RedisCluster)
        default = client.get_node("127.0.0.1", victim.port)
        assert default is not None
        client.set_default_node(default)  # where redis-py sends a PING by default
        victim.kill(signal.SIGKILL)
        with pytest.raises(Unavailable), store_guard("redis"):
            await link.call("GET", mine)
        # Other primaries serve on, at once: the map is read again in the background.
        for _ in range(3):
            with pytest.raises(Unavailable), store_guard("redis"):
                await asyncio.wait_for(link.call("GET", mine), 1.0)
            assert await asyncio.wait_for(link.call("GET", elsewhere), 1.0) == elsewhere[1:]
        # Readiness: the cluster still answers, so no replica is taken out of rotation.
        assert await link.call("PING") == "PONG"
        assert await client.ping()
        began = time.monotonic()
        while True:
            try:
                assert await link.call("GET", mine) == mine[1:]
                break
            except (ConnectionError, TimeoutError):
                assert time.monotonic() - began < 15, "the replica never took over"
                await asyncio.sleep(0.1)
        assert await client.get(mine) == mine[1:]  # redis-py's cluster client follows too
    finally:
        await link.aclose()
        await client.aclose()


def slot_zero_owner(topology: ClusterRedis) -> RedisNode:
    for start, _end, primary, *_ in ask(topology.primaries()[0].port, "CLUSTER", "SLOTS"):
        if start == 0:
            return next(n for n in topology.nodes if n.port == primary[1])
    raise AssertionError("nobody serves slot 0")


async def test_pubsub_and_presence_script_through_redis_py(shared_cluster: ClusterRedis) -> None:
    client = redis_client(shared_cluster.url, decode_responses=True)
    try:
        pubsub = client.pubsub()  # before the client has sent anything: it learns the slots
        await pubsub.subscribe(keys.chat_room_channel("lobby"))
        assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
        script = client.register_script(
            "redis.call('ZADD', KEYS[1], 1, ARGV[1]) redis.call('ZADD', KEYS[2], 1, ARGV[1]) "
            "return redis.call('ZCARD', KEYS[2])"
        )
        assert await script(keys=[keys.chat_where(5), keys.chat_online()], args=["r1"]) == 1
        await client.publish(keys.chat_room_channel("lobby"), "hi")
        message = await pubsub.get_message(timeout=2)
        assert message is not None and message["data"] == "hi"
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()


async def test_the_job_queue_enqueues_on_a_cluster(shared_cluster: ClusterRedis) -> None:
    jobs = QueueJobs(make_saq_queue(shared_cluster.url), JobPolicy(heartbeat=5, timeout=60))
    client = redis_client(shared_cluster.url, decode_responses=True)
    try:
        await jobs.enqueue("receipt", {"order_id": 1}, key="receipt:1")
        await jobs.enqueue("receipt", {"order_id": 1}, key="receipt:1")  # same key: ignored
        assert await client.llen(f"saq:{keys.job_queue()}:queued") == 1
    finally:
        await jobs.close()
        await client.aclose()
