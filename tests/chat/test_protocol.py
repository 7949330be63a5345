"""The chat protocol over two real stateless replicas, real Redis and real sockets."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.chat.support import (
    ChatClient,
    Login,
    Replica,
    api,
    is_type,
    joined,
    login,
    new_room,
    probe,
    unique,
)

Pair = tuple[Replica, Replica]


@pytest.mark.slow
async def test_two_users_on_two_replicas_exchange_1000_messages(pair: Pair) -> None:
    r1, r2 = pair
    alice, bob = await login(r1, unique("alice")), await login(r2, unique("bob"))
    room = await new_room(r1, alice)
    a, b = await joined(r1, alice, room), await joined(r2, bob, room)

    async def send_all(client: ChatClient, who: str) -> None:
        for i in range(500):
            await client.send(type="send", room=room, client_msg_id=f"{who}-{i}", text=f"{who} {i}")

    await asyncio.gather(send_all(a, "a"), send_all(b, "b"))
    for client in (a, b):
        await client.wait(is_type("message", seq=1000), timeout=90)

    for client in (a, b):
        messages = client.of("message", room)
        assert [m["seq"] for m in messages] == list(range(1, 1001))  # all, once, in order
        for who in ("a", "b"):
            mine = [m["client_msg_id"] for m in messages if m["client_msg_id"].startswith(who)]
            assert mine == [f"{who}-{i}" for i in range(500)]  # each sender's order kept
    for client, who in ((a, "a"), (b, "b")):
        await client.wait(is_type("ack", client_msg_id=f"{who}-499"))
        acks = {f["client_msg_id"]: f["seq"] for f in client.of("ack")}
        stored = {m["client_msg_id"]: m["seq"] for m in b.of("message", room)}
        assert len(acks) == 500
        assert all(stored[cmid] == seq for cmid, seq in acks.items())
    await a.close()
    await b.close()


async def test_a_resend_is_stored_once_and_acked_with_the_same_seq(pair: Pair) -> None:
    r1, r2 = pair
    alice, bob = await login(r1, unique("alice")), await login(r2, unique("bob"))
    room = await new_room(r1, alice)
    a, b = await joined(r1, alice, room), await joined(r2, bob, room)
    await a.send(type="send", room=room, client_msg_id="once", text="hello")
    first = await a.wait(is_type("ack", client_msg_id="once"))
    a2 = await ChatClient.open(r2, alice)  # the resend comes after a reconnect elsewhere
    await a2.send(type="send", room=room, client_msg_id="once", text="hello")
    second = await a2.wait(is_type("ack", client_msg_id="once"))
    await a.send(type="send", room=room, client_msg_id="twice", text="next")
    await b.wait(is_type("message", client_msg_id="twice"))
    await a.wait(is_type("message", client_msg_id="twice"))

    assert first["seq"] == second["seq"] == 1
    assert b.seqs(room) == [1, 2]
    assert [f["seq"] for f in a.of("message", room)] == [1, 2]
    assert [f["client_msg_id"] for f in b.of("message", room)] == ["once", "twice"]
    history = (await api(r2, bob, "GET", f"/api/chat/rooms/{room}/messages")).json()
    assert [m["client_msg_id"] for m in history["messages"]] == ["once", "twice"]
    for client in (a, a2, b):
        await client.close()


async def test_a_message_sent_right_after_a_join_reaches_its_sender(pair: Pair) -> None:
    """The join fixes where the socket's cursor starts before the next frame is read:
    a send that follows it at once (stored before the writer got round to the join)
    is still delivered, to the sender and to everyone who joined before."""
    r1, r2 = pair
    alice, bob = await login(r1, unique("alice")), await login(r2, unique("bob"))
    room = await new_room(r1, alice)
    b = await joined(r2, bob, room)
    a = await ChatClient.open(r1, alice)
    for i in range(20):
        await a.send(type="join", room=room)
        await a.send(type="send", room=room, client_msg_id=f"m{i}", text=f"right away {i}")
        await a.wait(is_type("message", client_msg_id=f"m{i}"), timeout=5)
        await a.send(type="leave", room=room)
    await b.wait(is_type("message", client_msg_id="m19"))
    assert b.seqs(room) == list(range(1, 21))
    for client in (a, b):
        await client.close()


async def test_unread_counts_are_right_after_reads_on_another_replica(pair: Pair) -> None:
    r1, r2 = pair
    alice, bob = await login(r1, unique("alice")), await login(r2, unique("bob"))
    room = await new_room(r1, alice)
    a = await joined(r1, alice, room)
    b_r2 = await joined(r2, bob, room)
    b_r1 = await joined(r1, bob, room)
    for i in range(5):
        await a.send(type="send", room=room, client_msg_id=f"m{i}", text=f"hi {i}")
    await b_r2.wait(is_type("message", seq=5))

    unread_r1 = (await api(r1, bob, "GET", "/api/chat/unread")).json()
    assert unread_r1 == {"rooms": {room: 5}, "total": 5}
    await b_r2.send(type="read", room=room, seq=3)
    assert (await b_r2.wait(is_type("unread", room=room, count=2)))["count"] == 2
    await b_r1.wait(is_type("unread", room=room, count=2))  # routed to bob's other replica
    assert (await api(r1, bob, "GET", "/api/chat/unread")).json()["rooms"] == {room: 2}
    assert (await api(r1, alice, "GET", "/api/chat/unread")).json()["rooms"] == {room: 0}

    await b_r1.send(type="read", room=room, seq=99)  # beyond the newest: read to the end
    await b_r1.wait(is_type("unread", room=room, count=0))
    assert (await api(r2, bob, "GET", "/api/chat/unread")).json()["rooms"] == {room: 0}
    mark = b_r1.mark()
    await b_r1.send(type="read", room=room, seq=1)  # read marks never move back
    assert (await b_r1.wait(is_type("unread", room=room), since=mark))["count"] == 0
    rooms = (await api(r2, bob, "GET", "/api/chat/rooms")).json()["rooms"]
    assert rooms == [{"id": room, "name": "pizza talk", "last_seq": 5, "unread": 0}]
    for client in (a, b_r1, b_r2):
        await client.close()


async def test_typing_reaches_other_replicas_and_expires(pair: Pair) -> None:
    r1, r2 = pair
    alice, bob = await login(r1, unique("alice")), await login(r2, unique("bob"))
    carol, dave = await login(r2, unique("carol")), await login(r2, unique("dave"))
    room = await new_room(r1, alice)
    a, b = await joined(r1, alice, room), await joined(r2, bob, room)

    await a.send(type="typing", room=room)
    await b.wait(is_type("typing", room=room, user=alice.username))
    c = await joined(r2, carol, room)  # joins within the TTL (2 s): told who is typing
    await c.wait(is_type("typing", room=room, user=alice.username))
    await probe(a)
    assert not a.of("typing")  # nobody is told about their own typing

    await asyncio.sleep(2.5)  # past the typing TTL, with no new typing frame
    d = await joined(r2, dave, room)
    await probe(d)
    assert not d.of("typing")
    for client in (a, b, c, d):
        await client.close()


async def test_presence_and_online_list_across_replicas(pair: Pair) -> None:
    r1, r2 = pair
    alice, bob = await login(r1, unique("alice")), await login(r2, unique("bob"))
    room = await new_room(r1, alice)
    a = await joined(r1, alice, room)
    b = await joined(r2, bob, room)
    await a.wait(is_type("presence", user=bob.username, online=True))
    await b.wait(is_type("presence", user=alice.username, online=True))
    users = (await api(r2, bob, "GET", "/api/chat/online")).json()["users"]
    assert {alice.username, bob.username} <= set(users)

    await b.close()  # bob's only socket: he goes offline at once, not after the TTL
    await a.wait(is_type("presence", user=bob.username, online=False))
    users = (await api(r1, alice, "GET", "/api/chat/online")).json()["users"]
    assert bob.username not in users
    await a.close()


async def test_bad_frames_get_error_frames_and_the_socket_stays_open(pair: Pair) -> None:
    r1, _ = pair
    alice = await login(r1, unique("alice"))
    room = await new_room(r1, alice)
    a = await joined(r1, alice, room)
    bad: list[tuple[str | bytes, str]] = [
        ("not json", "bad_frame"),
        ("[1, 2]", "bad_frame"),
        (json.dumps({"room": room}), "bad_frame"),
        (json.dumps({"type": "send", "room": room, "text": "x"}), "bad_frame"),
        (json.dumps({"type": "read", "room": room, "seq": -1}), "bad_frame"),
        (json.dumps({"type": "read", "room": room, "seq": "3"}), "bad_frame"),
        (json.dumps({"type": "join", "room": "x" * 33}), "bad_frame"),
        (b"\x00binary", "malformed_request"),
        (json.dumps({"type": "send", "room": room, "client_msg_id": "1", "text": "y" * 2001}),
         "limit_exceeded"),
        (json.dumps({"type": "send", "room": room, "client_msg_id": "2", "text": "  "}),
         "invalid_input"),
        (json.dumps({"type": "join", "room": "no-such-room"}), "not_found"),
        (json.dumps({"type": "send", "room": "no-such-room", "client_msg_id": "3", "text": "a"}),
         "not_found"),
        (json.dumps({"type": "typing", "room": "no-such-room"}), "not_found"),
        (json.dumps({"type": "resume", "rooms": {"no-such-room": 0}}), "not_found"),
    ]  # fmt: skip
    for frame, code in bad:
        mark = a.mark()
        await a.ws.send(frame)
        error = await a.wait(is_type("error"), since=mark)
        assert error["code"] == code, (frame[:60], error)
        assert error["detail"]
    await a.send(type="send", room=room, client_msg_id="ok", text="still here")
    assert (await a.wait(is_type("ack", client_msg_id="ok")))["seq"] == 1
    assert not a.closed
    await a.close()


async def test_rooms_per_user_and_history_limits(pair: Pair) -> None:
    r1, r2 = pair
    alice, bob = await login(r1, unique("alice")), await login(r2, unique("bob"))
    rooms = [await new_room(r1, alice, f"room {i}") for i in range(5)]
    r = await api(r1, alice, "POST", "/api/chat/rooms", json={"name": "one too many"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    bobs_rooms = [await new_room(r2, bob, f"bob {i}") for i in range(5)]
    b = await ChatClient.open(r2, bob)
    await b.send(type="join", room=rooms[0])
    assert (await b.wait(is_type("error")))["code"] == "limit_exceeded"

    a = await joined(r1, alice, rooms[0])
    for i in range(7):
        await a.send(type="send", room=rooms[0], client_msg_id=f"h{i}", text=f"h {i}")
    await a.wait(is_type("ack", client_msg_id="h6"))
    page = await api(r2, alice, "GET", f"/api/chat/rooms/{rooms[0]}/messages?after=2&limit=3")
    assert [m["seq"] for m in page.json()["messages"]] == [3, 4, 5]
    assert page.json()["messages"][0]["text"] == "h 2"
    assert (await api(r2, bob, "GET", f"/api/chat/rooms/{rooms[0]}/messages")).status_code == 404
    bad = await api(r2, alice, "GET", f"/api/chat/rooms/{rooms[0]}/messages?limit=100000")
    assert bad.status_code == 422
    await b.send(type="leave", room=bobs_rooms[0])
    await b.send(type="join", room=rooms[0])  # a room was freed
    await b.wait(is_type("unread", room=rooms[0], count=0))
    for client in (a, b):
        await client.close()


async def test_origin_and_credentials_are_checked(pair: Pair) -> None:
    r1, _ = pair
    alice = await login(r1, unique("alice"))
    with pytest.raises(InvalidStatus) as anonymous:
        await connect(r1.ws_url, open_timeout=5)
    assert anonymous.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as forged:
        await ChatClient.open(r1, alice, origin="http://evil.example")
    assert forged.value.response.status_code == 403
    bogus = Login(alice.user_id, alice.username, {"Cookie": "statelab_session=forged"}, {})
    with pytest.raises(InvalidStatus) as wrong:
        await ChatClient.open(r1, bogus)
    assert wrong.value.response.status_code == 401

    same = await ChatClient.open(r1, alice, origin=f"http://127.0.0.1:{r1.port}")
    await probe(same)
    await same.close()


async def test_logout_all_closes_the_users_sockets_on_every_replica(pair: Pair) -> None:
    r1, r2 = pair
    alice, bob = await login(r1, unique("alice")), await login(r1, unique("bob"))
    room = await new_room(r1, alice)
    on_r1, on_r2 = await joined(r1, alice, room), await joined(r2, alice, room)
    b = await joined(r2, bob, room)

    r = await api(r1, alice, "POST", "/api/auth/logout-all")
    assert r.status_code == 200, r.text
    assert await on_r1.wait_closed() == 4401
    assert await on_r2.wait_closed() == 4401
    await probe(b)
    assert not b.closed
    with pytest.raises(InvalidStatus):
        await ChatClient.open(r2, alice)  # the session itself is gone too
    await b.close()
