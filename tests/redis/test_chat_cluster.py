"""The chat's Redis placement on a Redis Cluster: presence, typing and a stored
message all reach the replicas watching the room (pub/sub and scripts work there)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from statelab.cluster.redis import ClusterRedis
from tests.chat.support import sqlite_database
from tests.chat.test_store import Deployment, Heard


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return sqlite_database(tmp_path)  # migrating runs its own event loop: not in one


@pytest.fixture
async def on_cluster(database_url: str, shared_cluster: ClusterRedis) -> AsyncIterator[Deployment]:
    deployment = Deployment(database_url, shared_cluster.url)
    yield deployment
    for store in deployment.stores:
        await asyncio.wait_for(store.stop(), 10)  # a hang here fails, never blocks
    await deployment.redis.aclose()
    await deployment.engine.dispose()


async def test_a_message_reaches_the_replicas_watching_its_room(on_cluster: Deployment) -> None:
    alice, bob = await on_cluster.users("alice", "bob")
    r1, r2 = on_cluster.replica("r1"), on_cluster.replica("r2")
    h1, h2 = Heard(), Heard()
    await r1.start(h1)
    await r2.start(h2)
    room = await r1.create_room("lobby", alice)
    await r1.join(room.id, bob)
    await r2.watch(room.id)
    await r2.enter(bob, "bob")  # the presence script: two keys, one hash slot
    posted = await asyncio.wait_for(r1.post(room.id, alice, "alice", "m1", "hello"), 10)
    for _ in range(100):
        if any(e.get("type") == "message" for _, e in h2.room_events):
            break
        await asyncio.sleep(0.02)
    messages = [e for _, e in h2.room_events if e.get("type") == "message"]
    assert [(m["client_msg_id"], m["seq"]) for m in messages] == [("m1", posted.message.seq)]
    assert "bob" in await r1.online(10)
