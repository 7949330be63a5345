"""The chat store placements on their own: real SQLite, real Redis, no replica process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from statelab.db import models
from statelab.db.engine import make_engine, sessionmaker
from statelab.domain.errors import LimitExceeded, NotFound
from statelab.state import keys, make_redis
from statelab.state.chat import ChatLimits, ChatStore, MemoryChat, RedisChat
from tests.chat.support import sqlite_database

LIMITS = ChatLimits(rooms_per_user=3, presence_ttl=0.6, typing_ttl=0.3)


class Heard:
    """A listener that records what the store tells its replica."""

    def __init__(self) -> None:
        self.room_events: list[tuple[str, dict[str, Any]]] = []
        self.user_events: list[tuple[int, dict[str, Any]]] = []
        self.departed: list[str] = []
        self.resyncs = 0

    async def room_event(self, room_id: str, event: dict[str, Any]) -> None:
        self.room_events.append((room_id, event))

    async def user_event(self, user_id: int, event: dict[str, Any]) -> None:
        self.user_events.append((user_id, event))

    async def resync(self) -> None:
        self.resyncs += 1

    async def gone(self, user_id: int, username: str) -> None:
        self.departed.append(username)


class Deployment:
    def __init__(self, database_url: str, redis_url: str) -> None:
        self.engine = make_engine(database_url)
        self.sessions = sessionmaker(self.engine)
        self.redis: Redis = make_redis(redis_url)
        self.stores: list[RedisChat] = []

    def replica(self, replica_id: str) -> RedisChat:
        store = RedisChat(self.redis, self.sessions, LIMITS, replica_id)
        self.stores.append(store)
        return store

    async def users(self, *names: str) -> list[int]:
        async with self.sessions() as db, db.begin():
            rows = [models.User(username=n, password_hash="x") for n in names]
            db.add_all(rows)
            await db.flush()
            return [r.id for r in rows]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return sqlite_database(tmp_path)  # migrating runs its own event loop: not in one


@pytest.fixture
async def deployment(database_url: str, redis_url: str) -> AsyncIterator[Deployment]:
    d = Deployment(database_url, redis_url)
    yield d
    for store in d.stores:
        await store.stop()
    await d.redis.aclose()
    await d.engine.dispose()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, deployment: Deployment) -> ChatStore:
    chat: ChatStore = MemoryChat(LIMITS) if request.param == "memory" else deployment.replica("r1")
    await chat.start(Heard())
    return chat


async def test_messages_get_gap_free_seqs_and_resends_are_stored_once(
    store: ChatStore, deployment: Deployment
) -> None:
    alice, bob = await deployment.users("alice", "bob")
    room = await store.create_room("r", alice)
    await store.join(room.id, bob)
    first = await store.post(room.id, alice, "alice", "c1", "one")
    second = await store.post(room.id, bob, "bob", "c1", "two")  # same id, other sender
    again = await store.post(room.id, alice, "alice", "c1", "changed")
    assert (first.new, second.new, again.new) == (True, True, False)
    assert (first.message.seq, second.message.seq, again.message.seq) == (1, 2, 1)
    assert again.message.text == "one"
    third = await store.post(room.id, alice, "alice", "c2", "three")
    assert third.message.seq == 3  # the refused resend used no seq
    history = await store.history(room.id, 0, 10)
    assert [m.seq for m in history] == [1, 2, 3]
    assert history[0].frame() == first.message.frame()
    assert [m.seq for m in await store.history(room.id, 1, 1)] == [2]
    assert await store.last_seq(room.id) == 3


async def test_unread_counts_follow_read_marks_and_own_messages(
    store: ChatStore, deployment: Deployment
) -> None:
    alice, bob = await deployment.users("alice", "bob")
    room = await store.create_room("r", alice)
    for i in range(3):
        await store.post(room.id, alice, "alice", f"a{i}", "hi")
    await store.join(room.id, bob)  # what came before joining counts as read
    for i in range(4):
        await store.post(room.id, alice, "alice", f"b{i}", "hi")
    assert await store.unread(bob) == {room.id: 4}
    assert await store.unread(alice) == {room.id: 0}
    assert await store.mark_read(room.id, bob, 5) == 2
    assert await store.mark_read(room.id, bob, 1) == 2  # never backwards
    await store.post(room.id, bob, "bob", "reply", "ok")  # sending reads up to it
    assert await store.unread(bob) == {room.id: 0}
    assert await store.unread(alice) == {room.id: 1}


async def test_membership_and_room_limits(store: ChatStore, deployment: Deployment) -> None:
    alice, bob = await deployment.users("alice", "bob")
    rooms = [await store.create_room(f"r{i}", alice) for i in range(3)]
    with pytest.raises(LimitExceeded):
        await store.create_room("one more", alice)
    with pytest.raises(NotFound):
        await store.post(rooms[0].id, bob, "bob", "x", "not a member")
    with pytest.raises(NotFound):
        await store.join("nope", bob)
    await store.join(rooms[0].id, bob)
    await store.join(rooms[0].id, bob)  # idempotent
    assert [r.id for r in await store.rooms_of(bob)] == [rooms[0].id]
    await store.leave(rooms[0].id, bob)
    with pytest.raises(NotFound):
        await store.room(rooms[0].id, bob)
    await store.leave(rooms[0].id, alice)
    await store.create_room("freed", alice)


async def test_typing_expires_by_itself(store: ChatStore, deployment: Deployment) -> None:
    (alice,) = await deployment.users("alice")
    room = await store.create_room("r", alice)
    await store.typing(room.id, "alice")
    assert await store.typists(room.id) == ["alice"]
    await asyncio.sleep(LIMITS.typing_ttl + 0.2)
    assert await store.typists(room.id) == []
    if isinstance(store, RedisChat):
        assert not await deployment.redis.exists(keys.chat_typing(room.id))


async def test_presence_of_a_dead_replica_expires_and_is_announced_once(
    deployment: Deployment,
) -> None:
    alice, bob = await deployment.users("alice", "bob")
    r1, r2, r3 = (deployment.replica(r) for r in ("r1", "r2", "r3"))
    heard = [Heard(), Heard(), Heard()]
    for chat, listener in zip((r1, r2, r3), heard, strict=True):
        await chat.start(listener)
    room = await r2.create_room("r", bob)
    assert await r1.enter(alice, "alice") is True
    assert await r2.enter(bob, "bob") is True
    assert await r2.enter(alice, "alice") is False  # already online through r1
    assert await r2.online_in(room.id) == ["bob"]
    assert await r1.exit(alice, "alice") is False  # still on r2
    assert await r2.exit(alice, "alice") is True

    await r1.enter(alice, "alice")
    for task in r1._tasks:  # r1 dies: no heartbeat, no goodbye
        task.cancel()
    r1._local.clear()
    await asyncio.sleep(LIMITS.presence_ttl * 2 + 0.5)
    assert sorted(await r2.online(10)) == ["bob"]  # r2's heartbeat keeps bob
    assert heard[1].departed + heard[2].departed == ["alice"]  # swept and announced once
    assert not await deployment.redis.exists(keys.chat_where(alice))


async def test_room_events_reach_only_replicas_watching_the_room(deployment: Deployment) -> None:
    (alice,) = await deployment.users("alice")
    r1, r2 = deployment.replica("r1"), deployment.replica("r2")
    h1, h2 = Heard(), Heard()
    await r1.start(h1)
    await r2.start(h2)
    assert h1.resyncs == h2.resyncs == 1  # caught up on subscribing
    room = await r1.create_room("r", alice)
    await r2.watch(room.id)
    await r1.publish(room.id, {"type": "typing", "room": room.id, "user": "alice"})
    await r2.enter(alice, "alice")
    await r1.tell_elsewhere(alice, {"type": "close"})
    for _ in range(100):
        if h2.room_events and h2.user_events:
            break
        await asyncio.sleep(0.02)
    assert h2.room_events == [(room.id, {"type": "typing", "room": room.id, "user": "alice"})]
    assert h2.user_events == [(alice, {"type": "close"})]
    assert h1.room_events == [] and h1.user_events == []
    await r2.unwatch(room.id)
    await r1.publish(room.id, {"type": "typing", "room": room.id, "user": "alice"})
    await asyncio.sleep(0.2)
    assert len(h2.room_events) == 1
