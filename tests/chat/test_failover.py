"""Replicas dying under a live chat: kill -9, graceful shutdown, slow and greedy clients."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import time

import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed, InvalidStatus

from statelab.state import keys
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

PRESENCE_TTL = 3.0  # STATELAB_CHAT_PRESENCE_TTL_SECONDS of the test replicas


async def send_from(client: ChatClient, room: str, ids: list[str], window: int = 20) -> int:
    """Send ``ids`` in order with at most ``window`` unacknowledged, as a client with a
    bounded outbox would; returns how many went out before the socket died."""
    base = len(client.acks)
    for sent, cmid in enumerate(ids):
        for _ in range(5000):
            if len(client.acks) - base >= sent - window or client.closed:
                break
            await asyncio.sleep(0.002)
        try:
            await client.send(type="send", room=room, client_msg_id=cmid, text=f"text {cmid}")
        except ConnectionClosed:
            return sent
    return len(ids)


async def all_history(replica: Replica, who: Login, room: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for _ in range(100):
        path = f"/api/chat/rooms/{room}/messages?after={len(out)}&limit=200"
        page = await api(replica, who, "GET", path)
        assert page.status_code == 200, page.text
        out += page.json()["messages"]
        if len(page.json()["messages"]) < 200:
            return out
    raise AssertionError("history did not end")


@pytest.mark.slow
async def test_kill_9_mid_stream_then_resume_elsewhere_loses_nothing(cluster: Cluster) -> None:
    r1, r2 = cluster.start("r1", "r2")
    lb = cluster.balancer([r1, r2])
    alice, bob = await login(r1, unique("alice")), await login(r2, unique("bob"))
    carol = await login(r1, unique("carol"))
    room = await new_room(r1, alice)
    a, b = await joined(r1, alice, room), await joined(r2, bob, room)
    c = await joined(r1, carol, room)  # idle on r1: her presence must expire
    await b.wait(is_type("presence", user=carol.username, online=True))

    alice_ids = [f"a{i}" for i in range(300)]
    bob_ids = [f"b{i}" for i in range(300)]
    bob_task = asyncio.create_task(send_from(b, room, bob_ids))
    alice_task = asyncio.create_task(send_from(a, room, alice_ids))
    await wait_until(lambda: len(a.acks) >= 100, timeout=30, step=0.005)
    r1.kill9()
    killed_at = time.monotonic()
    sent_before = await alice_task
    await a.wait_closed()
    assert sent_before < len(alice_ids), "the kill came too late to be mid-stream"

    # Alice reconnects through the load balancer (which finds the survivor), resumes,
    # and resends what was never acknowledged.
    last_seen = a.seqs(room)[-1]
    acked = {f["client_msg_id"] for f in a.of("ack")}
    a2 = await ChatClient.open(lb, alice)
    await a2.send(type="resume", rooms={room: last_seen})
    unacked = [cmid for cmid in alice_ids[:sent_before] if cmid not in acked]
    await send_from(a2, room, unacked + alice_ids[sent_before:])
    await bob_task
    for client in (a2, b):
        await client.wait(is_type("message", seq=600), timeout=60)

    # Zero gaps, zero duplicates, in order: across both of alice's sockets, and for bob.
    assert a.seqs(room) + a2.seqs(room) == list(range(1, 601))
    assert b.seqs(room) == list(range(1, 601))
    history = await all_history(r2, bob, room)
    assert sorted(str(m["client_msg_id"]) for m in history) == sorted(alice_ids + bob_ids)
    stored = {m["client_msg_id"]: m["seq"] for m in history}
    for ack in a.of("ack") + a2.of("ack"):
        assert stored[ack["client_msg_id"]] == ack["seq"]  # a resend got the same seq

    # Carol's only replica died: she goes offline by herself within the TTL.
    offline = await b.wait(is_type("presence", user=carol.username, online=False), timeout=15)
    told_at = b.arrived[next(i for i, f in enumerate(b.frames) if f is offline)]
    assert told_at - killed_at <= 2 * PRESENCE_TTL + 2  # TTL, plus a heartbeat to sweep
    users = (await api(r2, bob, "GET", "/api/chat/online")).json()["users"]
    assert carol.username not in users and alice.username in users
    async with aioredis.from_url(str(cluster.redis_url), decode_responses=True) as r:
        await wait_until(lambda: _gone(r, carol), timeout=2 * PRESENCE_TTL)
        assert await r.zscore(keys.chat_online(), f"{carol.user_id}:{carol.username}") is None
    for client in (a2, b, c):
        await client.close()


async def _gone(r: aioredis.Redis, who: Login) -> bool:
    return not await r.exists(keys.chat_where(who.user_id))


@pytest.mark.slow
async def test_memory_placement_loses_the_chat_with_its_replica(cluster: Cluster) -> None:
    r1, r2 = cluster.start("r1", "r2", profile="stateful")
    alice, bob = await login(r1, unique("alice")), await login(r1, unique("bob"))
    room = await new_room(r1, alice)
    a, b = await joined(r1, alice, room), await joined(r1, bob, room)
    for i in range(25):
        await a.send(type="send", room=room, client_msg_id=f"a{i}", text="hi")
        await b.send(type="send", room=room, client_msg_id=f"b{i}", text="hello")
    await a.wait(is_type("ack", client_msg_id="a24"))
    await b.wait(is_type("ack", client_msg_id="b24"))
    await a.wait(is_type("message", seq=50))
    acked = len(a.of("ack")) + len(b.of("ack"))
    assert acked == 50

    # Users on different replicas never meet: the room exists only in r1.
    carol = await login(r2, unique("carol"))
    c = await ChatClient.open(r2, carol)
    await c.send(type="join", room=room)
    assert (await c.wait(is_type("error")))["code"] == "not_found"

    r1.kill9()
    await a.wait_closed()
    with pytest.raises(InvalidStatus):  # the session died with r1 as well
        await ChatClient.open(r2, alice)
    alice = await login(r2, alice.username, register=False)
    a2 = await ChatClient.open(r2, alice)
    await a2.send(type="resume", rooms={room: 0})
    assert (await a2.wait(is_type("error")))["code"] == "not_found"
    page = await api(r2, alice, "GET", f"/api/chat/rooms/{room}/messages")
    assert page.status_code == 404
    recovered = len(a2.of("message"))
    assert acked - recovered == 50  # every acknowledged message is lost
    for client in (b, c, a2):
        await client.close()


@pytest.mark.slow
async def test_graceful_shutdown_closes_sockets_with_1012(cluster: Cluster) -> None:
    (r1,) = cluster.start("r1")
    alice = await login(r1, unique("alice"))
    room = await new_room(r1, alice)
    a = await joined(r1, alice, room)
    a2 = await ChatClient.open(r1, alice)  # a socket in no room
    # SIGTERM: uvicorn closes the sockets, our lifespan ends, then it re-raises the signal.
    assert r1.stop(15) in (0, -signal.SIGTERM)
    assert await a.wait_closed() == 1012
    assert await a2.wait_closed() == 1012
    log = r1.log_path.read_text()
    assert "Application shutdown complete" in log
    assert "Traceback" not in log and "ERROR" not in log, log[-2000:]
    async with aioredis.from_url(str(cluster.redis_url), decode_responses=True) as r:
        # Left on purpose: offline at once, not after the presence TTL.
        assert await r.zscore(keys.chat_online(), f"{alice.user_id}:{alice.username}") is None
        assert not await r.exists(keys.chat_where(alice.user_id))


class StalledClient:
    """A WebSocket client on a bare socket that joins a room and then stops reading,
    with a tiny receive buffer: the server's sends back up quickly."""

    def __init__(self, replica: Replica, who: Login) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", replica.port))
        key = base64.b64encode(os.urandom(16)).decode()
        auth = "".join(f"{k}: {v}\r\n" for k, v in who.headers.items())
        self.sock.sendall(
            f"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1:{replica.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{auth}\r\n".encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_text(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        assert len(payload) < 126
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def drain(self) -> tuple[int, int | None]:
        """Read everything left: (message frames, close code or None on a reset)."""
        messages = 0
        for _ in range(100_000):
            frame = self._frame()
            if frame is None:
                return messages, None
            opcode, payload = frame
            if opcode == 0x8:
                return messages, int.from_bytes(payload[:2], "big")
            messages += b'"type":"message"' in payload
        raise AssertionError("too many frames")

    def _read(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return None
            if not chunk:
                return None
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _frame(self) -> tuple[int, bytes] | None:
        head = self._read(2)
        if head is None:
            return None
        size = head[1] & 0x7F
        if size >= 126:
            extended = self._read(2 if size == 126 else 8)
            if extended is None:
                return None
            size = int.from_bytes(extended, "big")
        payload = self._read(size)
        return None if payload is None else (head[0] & 0x0F, payload)


@pytest.mark.slow
async def test_a_slow_client_is_cut_off_and_does_not_stall_the_room(cluster: Cluster) -> None:
    env = {"STATELAB_CHAT_SEND_QUEUE_FRAMES": "20", "STATELAB_MAX_MESSAGE_CHARS": "20000"}
    (r1,) = cluster.start("r1", profile="token", **env)
    alice, bob = await login(r1, unique("alice")), await login(r1, unique("bob"))
    assert "Authorization" in alice.headers  # the token profile: bearer tokens
    room = await new_room(r1, alice)
    fast = await joined(r1, alice, room)
    slow = StalledClient(r1, bob)
    slow.send_text(f'{{"type":"join","room":"{room}"}}')
    await fast.wait(is_type("presence", user=bob.username, online=True))

    # Up to 8 MB: more than the kernel (4 MB send buffer at most) and the server buffer.
    async def flood() -> None:
        for i in range(400):
            await fast.send(type="send", room=room, client_msg_id=f"m{i}", text="p" * 20_000)

    flooding = asyncio.create_task(flood())
    await wait_until(lambda: "too slow" in r1.log_path.read_text(), timeout=60)
    received, code = await asyncio.to_thread(slow.drain)
    slow.sock.close()
    await flooding
    await fast.wait(is_type("message", seq=400), timeout=60)
    assert fast.seqs(room) == list(range(1, 401))  # the room kept flowing
    assert code == 1013 and received < 400
    await fast.close()


@pytest.mark.slow
async def test_frames_over_the_rate_limit_get_errors(cluster: Cluster) -> None:
    env = {"STATELAB_CHAT_FRAMES_PER_SECOND": "5", "STATELAB_CHAT_FRAME_BURST": "5"}
    (r1,) = cluster.start("r1", **env)
    alice = await login(r1, unique("alice"))
    room = await new_room(r1, alice)
    a = await ChatClient.open(r1, alice)
    for i in range(12):
        await a.send(type="send", room=room, client_msg_id=f"m{i}", text="spam")
    await a.wait(lambda f: len(a.of("ack")) + len(a.of("error")) >= 12)
    refused = [f for f in a.of("error") if f["code"] == "rate_limited"]
    assert 5 <= len(a.of("ack")) <= 7 and len(refused) >= 5
    await asyncio.sleep(1.0)
    await a.send(type="send", room=room, client_msg_id="later", text="calm")
    assert (await a.wait(is_type("ack", client_msg_id="later")))["seq"] == len(a.of("ack"))
    await a.close()
