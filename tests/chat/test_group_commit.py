"""Group commit of chat messages against real SQLite, PostgreSQL and Redis: two chat
stores, each with its own engine, stand for two replicas of one deployment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from statelab.db import models
from statelab.db.engine import make_engine, sessionmaker
from statelab.db.migrate import upgrade
from statelab.domain.errors import NotFound
from statelab.state import make_redis
from statelab.state.chat import ChatLimits, Posted, RedisChat
from statelab.state.redisclient import RedisClient
from tests.chat.support import sqlite_database
from tests.chat.test_store import Heard

LIMITS = ChatLimits(rooms_per_user=5, presence_ttl=5.0, typing_ttl=1.0)


class Replicas:
    """Two chat stores over one database and one Redis, each with its own pool, and
    a count of the transactions each committed."""

    def __init__(self, database_url: str, redis_url: str) -> None:
        self.engines = [make_engine(database_url), make_engine(database_url)]
        self.commits = 0
        for engine in self.engines:
            event.listen(engine.sync_engine, "commit", self._count)
        self.redis: RedisClient = make_redis(redis_url)
        self.stores = [
            RedisChat(self.redis, sessionmaker(engine), LIMITS, f"r{i + 1}")
            for i, engine in enumerate(self.engines)
        ]

    def _count(self, *_: Any) -> None:
        self.commits += 1

    async def users(self, count: int) -> list[int]:
        async with sessionmaker(self.engines[0])() as db, db.begin():
            rows = [models.User(username=f"user{i}", password_hash="x") for i in range(count)]
            db.add_all(rows)
            await db.flush()
            return [row.id for row in rows]

    async def room_of(self, users: list[int]) -> str:
        room = await self.stores[0].create_room("busy", users[0])
        for user in users[1:]:
            await self.stores[0].join(room.id, user)
        return room.id

    async def close(self) -> None:
        for store in self.stores:
            await store.stop()
        await self.redis.aclose()
        for engine in self.engines:
            await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    # Migrating runs its own event loop: here, not inside the test's.
    if request.param == "sqlite":
        return sqlite_database(tmp_path)
    url: str = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


@pytest.fixture
async def replicas(database_url: str, redis_url: str) -> AsyncIterator[Replicas]:
    deployment = Replicas(database_url, redis_url)
    try:
        yield deployment
    finally:
        await deployment.close()


def _seqs_by_sender(posted: list[Posted]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for p in posted:
        out.setdefault(p.message.sender_id, []).append(p.message.seq)
    return out


@pytest.mark.parametrize("rooms", [1, 5])
async def test_concurrent_posts_share_transactions_and_keep_number_and_order(
    replicas: Replicas, rooms: int
) -> None:
    users = await replicas.users(8)
    room_ids = [await replicas.room_of(users) for _ in range(rooms)]
    replicas.commits = 0
    # Eight senders, half on each replica, 25 messages each, all in flight at once,
    # spread over the rooms (so that batches of both replicas span the same rooms);
    # tasks start in the order they are made, so that is each sender's order.
    tasks = [
        asyncio.create_task(
            replicas.stores[s % 2].post(
                room_ids[(i + s) % rooms], user, f"user{s}", f"c{i}", f"message {i}"
            )
        )
        for i in range(25)
        for s, user in enumerate(users)
    ]
    posted = list(await asyncio.gather(*tasks))

    assert all(p.new for p in posted)
    assert replicas.commits <= len(posted) / 5  # batched: one transaction per message before
    for room in room_ids:
        mine = [p for p in posted if p.message.room == room]
        count = len(mine)
        assert sorted(p.message.seq for p in mine) == list(range(1, count + 1))  # once each
        for seqs in _seqs_by_sender(mine).values():
            assert seqs == sorted(seqs)  # each sender's messages in the order sent
        history = await replicas.stores[1].history(room, 0, 500)
        assert [(m.seq, m.client_msg_id, m.sender_id) for m in history] == sorted(
            (p.message.seq, p.message.client_msg_id, p.message.sender_id) for p in mine
        )
        assert await replicas.stores[0].last_seq(room) == count
        # Sending marks the room read up to one's own newest message, batched or not.
        for s, user in enumerate(users):
            newest = max(_seqs_by_sender(mine)[user])
            assert (await replicas.stores[s % 2].unread(user))[room] == count - newest


async def test_a_batch_answers_each_post_alone(replicas: Replicas) -> None:
    alice, bob, mallory = await replicas.users(3)
    room = await replicas.room_of([alice, bob])
    first = await replicas.stores[0].post(room, alice, "alice", "a0", "before")
    store = replicas.stores[0]
    results = await asyncio.gather(
        store.post(room, bob, "bob", "b1", "one"),
        store.post(room, mallory, "mallory", "m1", "not a member"),
        store.post(room, alice, "alice", "a0", "a resend of a stored one"),
        store.post(room, bob, "bob", "b2", "two"),
        store.post(room, bob, "bob", "b1", "a resend within the batch"),
        store.post("no-such-room", bob, "bob", "b3", "nowhere"),
        return_exceptions=True,
    )
    b1, refused, a0, b2, b1_again, nowhere = results
    assert isinstance(refused, NotFound) and isinstance(nowhere, NotFound)
    assert isinstance(b1, Posted) and isinstance(b2, Posted)
    assert isinstance(a0, Posted) and isinstance(b1_again, Posted)
    assert (b1.new, b2.new, a0.new, b1_again.new) == (True, True, False, False)
    assert (b1.message.seq, b2.message.seq) == (2, 3)  # the refused ones take no number
    assert b1_again.message == b1.message and b1_again.message.text == "one"
    assert a0.message == first.message
    history = await store.history(room, 0, 10)
    assert [(m.seq, m.client_msg_id) for m in history] == [(1, "a0"), (2, "b1"), (3, "b2")]


async def test_a_resend_racing_itself_on_two_replicas_is_stored_once(
    replicas: Replicas,
) -> None:
    (alice,) = await replicas.users(1)
    room = await replicas.room_of([alice])
    r1, r2 = replicas.stores
    for i in range(30):
        one, two = await asyncio.gather(
            r1.post(room, alice, "alice", f"x{i}", "hello"),
            r2.post(room, alice, "alice", f"x{i}", "hello"),
        )
        assert one.message.seq == two.message.seq == i + 1
        assert sorted((one.new, two.new)) == [False, True]
    history = await r1.history(room, 0, 100)
    assert [m.seq for m in history] == list(range(1, 31))


async def test_a_batch_is_routed_with_one_publish_per_room(replicas: Replicas) -> None:
    alice, bob = await replicas.users(2)
    room, other = await replicas.room_of([alice, bob]), await replicas.room_of([alice, bob])
    r1, r2 = replicas.stores
    heard = Heard()
    await r1.start(Heard())
    await r2.start(heard)
    await r2.watch(room)
    await r2.watch(other)
    before = await _publishes(replicas.redis)
    posted = await asyncio.gather(
        *(r1.post(room if i % 4 else other, alice, "alice", f"c{i}", "hi") for i in range(40))
    )
    publishes = await _publishes(replicas.redis) - before
    for _ in range(200):
        if len(heard.room_events) >= 40:
            break
        await asyncio.sleep(0.02)
    frames = {(r, e["seq"], e["client_msg_id"]) for r, e in heard.room_events}
    assert frames == {(p.message.room, p.message.seq, p.message.client_msg_id) for p in posted}
    for room_id in (room, other):  # each room's frames arrive in seq order
        seqs = [e["seq"] for r, e in heard.room_events if r == room_id]
        assert seqs == sorted(seqs)
    assert publishes < 20  # one per room per batch; it was one per message


async def _publishes(redis: RedisClient) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_publish", {}).get("calls", 0))


@pytest.fixture
def migrated_postgres(postgres_url: str) -> str:
    upgrade(postgres_url)
    return postgres_url


async def test_the_writer_connection_dropped_by_the_database_is_replaced(
    migrated_postgres: str, redis_url: str
) -> None:
    replicas = Replicas(migrated_postgres, redis_url)
    try:
        (alice,) = await replicas.users(1)
        room = await replicas.room_of([alice])
        store = replicas.stores[0]
        assert (await store.post(room, alice, "alice", "before", "hi")).message.seq == 1
        # What a database restart does to the connection the store keeps between batches.
        async with replicas.engines[1].connect() as admin:
            killed = await admin.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        assert killed and killed >= 1
        after = await store.post(room, alice, "alice", "after", "still here")
        assert (after.new, after.message.seq) == (True, 2)
        history = await store.history(room, 0, 10)
        assert [m.client_msg_id for m in history] == ["before", "after"]
    finally:
        await replicas.close()
