"""A message stored while Redis was away reaches the replicas watching its room once
Redis answers again, with no later message and no resync of theirs to find it.

Two chat stores over one SQLite file and a Redis of the test's own stand for two
replicas. The publisher logs in to Redis as an account the test creates at run time:
Redis does not keep it across a restart, so after one the receiver is back first
and the publisher only once the test creates the account again, as after a Sentinel
failover, where replicas find the new primary at different moments. Everything the
receiver's listener records as a room event was published to Redis (a resync of this
listener reads nothing), so a message it records came through the publisher's routing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from statelab.cluster.servers import RedisServer
from statelab.db import models
from statelab.db.engine import make_engine, sessionmaker
from statelab.state import chat, make_redis
from statelab.state.chat import ChatLimits, RedisChat
from tests.chat.support import sqlite_database, wait_until
from tests.chat.test_store import Heard

LIMITS = ChatLimits(rooms_per_user=5, presence_ttl=5.0, typing_ttl=1.0)
PUBLISHER = "publisher"
SECRET = "routing-retry-7d0c5b1e"


class Outage:
    """A publisher and a receiver over one database and one restartable Redis."""

    def __init__(self, database_url: str, redis: RedisServer) -> None:
        self.server = redis
        self.engine = make_engine(database_url)
        self.sessions = sessionmaker(self.engine)
        host_port = redis.url.removeprefix("redis://")
        self.publisher_redis = make_redis(f"redis://{PUBLISHER}:{SECRET}@{host_port}")
        self.receiver_redis = make_redis(redis.url)
        self.publisher = RedisChat(self.publisher_redis, self.sessions, LIMITS, "r1")
        self.receiver = RedisChat(self.receiver_redis, self.sessions, LIMITS, "r2")
        self.heard = Heard()

    async def start(self) -> None:
        await self.let_publisher_in()
        await self.publisher.start(Heard())
        await self.receiver.start(self.heard)

    async def let_publisher_in(self) -> None:
        async with Redis.from_url(self.server.url) as admin:
            await admin.acl_setuser(
                PUBLISHER,
                enabled=True,
                passwords=[f"+{SECRET}"],
                keys=["*"],
                channels=["*"],
                commands=["+@all"],
            )

    async def users(self, *names: str) -> list[int]:
        async with self.sessions() as db, db.begin():
            rows = [models.User(username=n, password_hash="x") for n in names]
            db.add_all(rows)
            await db.flush()
            return [r.id for r in rows]

    def seqs(self, room: str) -> list[int]:
        """The message seqs the receiver's listener was handed for ``room``, in order."""
        return [int(e["seq"]) for r, e in self.heard.room_events if _message_in(r, e, room)]

    async def heard_seq(self, room: str, seq: int, timeout: float = 15.0) -> None:
        await wait_until(lambda: seq in self.seqs(room), timeout=timeout, step=0.02)

    async def restart_redis(self) -> None:
        """Redis back on the same port; the receiver subscribed again (its resync ran),
        the publisher still kept out."""
        resyncs = self.heard.resyncs
        self.server.start()
        self.server.wait_ready()
        await wait_until(lambda: self.heard.resyncs > resyncs, timeout=15)
        async with Redis.from_url(self.server.url) as admin:
            stats = await admin.info("commandstats")
        assert "cmdstat_publish" not in stats  # nobody published since the restart

    async def close(self) -> None:
        for store in (self.publisher, self.receiver):
            await asyncio.wait_for(store.stop(), 10)  # a hang here fails, never blocks
        for client in (self.publisher_redis, self.receiver_redis):
            await client.aclose()
        await self.engine.dispose()


def _gave_up(caplog: pytest.LogCaptureFixture) -> bool:
    """Whether the publisher reported a batch it could not route (redis-py had retried
    the publish meanwhile: a Redis back within that time changes nothing here)."""
    return any(
        r.name == chat.__name__ and r.levelno == logging.WARNING and "not routed" in r.message
        for r in caplog.records
    )


def _message_in(room_id: str, event: dict[str, Any], room: str) -> bool:
    return room_id == room and event.get("type") == "message"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own: stopping it disturbs no other test."""
    server = RedisServer(tmp_path / "redis", persistence="off")
    with server:
        yield server


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return sqlite_database(tmp_path)  # migrating runs its own event loop: not in one


@pytest.fixture
async def outage(database_url: str, own_redis: RedisServer) -> AsyncIterator[Outage]:
    deployment = Outage(database_url, own_redis)
    await deployment.start()
    try:
        yield deployment
    finally:
        await deployment.close()


async def test_a_message_stored_while_redis_was_away_is_routed_when_it_is_back(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = await outage.users("alice", "bob")
    room = await outage.publisher.create_room("lobby", alice)
    await outage.publisher.join(room.id, bob)
    await outage.receiver.watch(room.id)
    await outage.publisher.post(room.id, alice, "alice", "m1", "before")
    await outage.heard_seq(room.id, 1)

    outage.server.stop()
    stored = await asyncio.wait_for(
        outage.publisher.post(room.id, alice, "alice", "m2", "while away"), 10
    )
    assert (stored.new, stored.message.seq) == (True, 2)  # stored and acknowledged
    await wait_until(lambda: _gave_up(caplog), timeout=30)
    await outage.restart_redis()
    assert outage.seqs(room.id) == [1]

    await outage.let_publisher_in()
    await outage.heard_seq(room.id, 2)
    assert outage.seqs(room.id) == [1, 2]
    assert await outage.publisher.last_seq(room.id) == 2  # no later message carried it


async def test_kept_batches_leave_in_seq_order_ahead_of_newer_ones(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = await outage.users("alice", "bob")
    one = (await outage.publisher.create_room("one", alice)).id
    two = (await outage.publisher.create_room("two", bob)).id
    for room in (one, two):
        await outage.receiver.watch(room)
    post = outage.publisher.post

    outage.server.stop()
    await post(one, alice, "alice", "a1", "first batch")
    await wait_until(lambda: _gave_up(caplog), timeout=30)
    # Batches of their own, stored while the first waits to be routed again.
    await post(two, bob, "bob", "b1", "second batch")
    await asyncio.gather(
        post(one, alice, "alice", "a2", "third batch"), post(two, bob, "bob", "b2", "third")
    )
    await outage.restart_redis()
    await outage.let_publisher_in()
    newer = await post(one, alice, "alice", "a3", "stored once Redis was back")
    assert newer.message.seq == 3

    await outage.heard_seq(one, 3)
    await outage.heard_seq(two, 2)
    assert outage.seqs(one) == [1, 2, 3]  # each once, in order, the newer one last
    assert outage.seqs(two) == [1, 2]


async def test_only_the_newest_kept_messages_are_routed_again(
    outage: Outage, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chat, "MAX_UNROUTED", 3)
    (alice,) = await outage.users("alice")
    room = (await outage.publisher.create_room("lobby", alice)).id
    await outage.receiver.watch(room)

    outage.server.stop()
    posts = [outage.publisher.post(room, alice, "alice", f"m{i}", "one batch") for i in range(1, 7)]
    assert [p.message.seq for p in await asyncio.gather(*posts)] == list(range(1, 7))
    await wait_until(lambda: _gave_up(caplog), timeout=30)
    await outage.restart_redis()
    await outage.let_publisher_in()

    await outage.heard_seq(room, 6)
    assert outage.seqs(room) == [4, 5, 6]  # 1-3 are in history: a socket pulls the gap
    assert [m.seq for m in await outage.receiver.history(room, 0, 10)] == list(range(1, 7))


async def test_a_store_stopped_while_redis_is_away_stops_and_says_what_it_left(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    (alice,) = await outage.users("alice")
    room = (await outage.publisher.create_room("lobby", alice)).id
    outage.server.stop()
    await outage.publisher.post(room, alice, "alice", "m1", "never routed")
    await wait_until(lambda: _gave_up(caplog), timeout=30)

    await asyncio.wait_for(outage.publisher.stop(), 10)
    assert any("1 stored messages left unrouted" in r.message for r in caplog.records)
    assert [m.seq for m in await outage.receiver.history(room, 0, 10)] == [1]
