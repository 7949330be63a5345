"""Sending under load over real replicas: sends of a socket share commits, many senders
on two replicas get one gap-free numbering, and a replica killed mid-batch has
acknowledged only what it stored."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from tests.chat.conftest import Cluster
from tests.chat.support import (
    ChatClient,
    Login,
    Replica,
    api,
    is_type,
    joined,
    login,
    new_room,
    unique,
    wait_until,
)
from tests.chat.test_failover import all_history

Pair = tuple[Replica, Replica]
SQL_CALLS = re.compile(r'^statelab_store_calls_total\{[^}]*store="sql"[^}]*\} ([\d.e+]+)$', re.M)


async def sql_statements(replica: Replica) -> float:
    """SQL statements the replica has sent so far (its ``/metrics``)."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{replica.http}/metrics")).text
    found = SQL_CALLS.search(text)
    assert found is not None, text
    return float(found.group(1))


async def burst(client: ChatClient, room: str, ids: list[str]) -> None:
    """Send every id at once, without waiting for acks."""
    for cmid in ids:
        await client.send(type="send", room=room, client_msg_id=cmid, text=f"text {cmid}")


async def all_acked(client: ChatClient, count: int) -> None:
    await client.wait(lambda _: len(client.acks) >= count, timeout=60)


async def members(target: Replica, room: str, count: int, prefix: str) -> list[Login]:
    users = [await login(target, unique(prefix)) for _ in range(count)]
    for user in users:
        r = await api(target, user, "POST", f"/api/chat/rooms/{room}/join")
        assert r.status_code == 200, r.text
    return users


async def test_sends_of_one_socket_share_commits_and_keep_their_order(pair: Pair) -> None:
    r1, _ = pair
    alice = await login(r1, unique("alice"))
    room = await new_room(r1, alice)
    a = await joined(r1, alice, room)
    before = await sql_statements(r1)
    ids = [f"m{i}" for i in range(60)]
    await burst(a, room, ids)
    await all_acked(a, len(ids))
    statements = await sql_statements(r1) - before
    assert a.acks == ids  # answered in the order sent
    assert [f["seq"] for f in a.of("ack")] == list(range(1, 61))
    assert statements < len(ids)  # a transaction per message took four or more
    await a.wait(is_type("message", seq=60))
    assert a.seqs(room) == list(range(1, 61))
    await a.close()


@pytest.mark.slow
async def test_many_senders_on_two_replicas_get_one_gap_free_numbering(pair: Pair) -> None:
    r1, r2 = pair
    owner = await login(r1, unique("owner"))
    room = await new_room(r1, owner)
    watchers = [await joined(r1, owner, room)]
    watchers.append(await joined(r2, (await members(r2, room, 1, "watch"))[0], room))
    senders = await members(r1, room, 4, "s1") + await members(r2, room, 4, "s2")
    sockets = [await ChatClient.open(r1 if i < 4 else r2, s) for i, s in enumerate(senders)]
    ids = {i: [f"s{i}-{k}" for k in range(40)] for i in range(len(sockets))}

    await asyncio.gather(*(burst(sockets[i], room, ids[i]) for i in ids))
    total = sum(len(v) for v in ids.values())
    for client in sockets:
        await all_acked(client, 40)
    for watcher in watchers:
        await watcher.wait(is_type("message", seq=total), timeout=60)

    acked: dict[str, int] = {}
    for i, client in enumerate(sockets):
        seqs = [f["seq"] for f in client.of("ack")]
        assert client.acks == ids[i] and seqs == sorted(seqs)  # each sender's order
        acked.update(zip(client.acks, seqs, strict=True))
    assert sorted(acked.values()) == list(range(1, total + 1))  # one numbering, no gap
    for watcher in watchers:  # both replicas deliver all of it, in order, once
        assert watcher.seqs(room) == list(range(1, total + 1))
        assert {f["client_msg_id"]: f["seq"] for f in watcher.of("message", room)} == acked
    for client in [*sockets, *watchers]:
        await client.close()


@pytest.mark.slow
async def test_kill_9_mid_batch_acknowledged_only_what_was_stored(cluster: Cluster) -> None:
    r1, r2 = cluster.start("r1", "r2")
    owner = await login(r2, unique("owner"))
    room = await new_room(r2, owner)
    senders = await members(r1, room, 3, "sender")
    sockets = [await ChatClient.open(r1, s) for s in senders]
    ids = {s.username: [f"{s.username}-{k}" for k in range(200)] for s in senders}
    bursts = [
        asyncio.create_task(burst(sock, room, ids[s.username]))
        for sock, s in zip(sockets, senders, strict=True)
    ]
    await wait_until(lambda: sum(len(c.acks) for c in sockets) >= 60, timeout=30, step=0.002)
    r1.kill9()
    await asyncio.gather(*bursts, return_exceptions=True)
    for client in sockets:
        await client.wait_closed()
    acked = {
        (s.username, f["client_msg_id"]): f["seq"]
        for sock, s in zip(sockets, senders, strict=True)
        for f in sock.of("ack")
    }
    history = await all_history(r2, owner, room)
    stored = {(str(m["sender"]), str(m["client_msg_id"])): m["seq"] for m in history}
    assert [m["seq"] for m in history] == list(range(1, len(history) + 1))  # no gap
    assert len(stored) == len(history)  # no message twice
    assert acked and all(stored.get(key) == seq for key, seq in acked.items())
    assert len(acked) < sum(len(v) for v in ids.values())  # the kill did cut it short

    # Everything sent again through the other replica: what was stored keeps its seq.
    again = [await ChatClient.open(r2, s) for s in senders]
    pairs = zip(again, senders, strict=True)
    await asyncio.gather(*(burst(c, room, ids[s.username]) for c, s in pairs))
    for client in again:
        await all_acked(client, 200)
    history = await all_history(r2, owner, room)
    assert [m["seq"] for m in history] == list(range(1, 601))
    final = {(str(m["sender"]), str(m["client_msg_id"])): m["seq"] for m in history}
    assert len(final) == 600 and all(final[key] == seq for key, seq in stored.items())
    for client in again:
        await client.close()
