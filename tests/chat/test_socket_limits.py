"""What one socket and one user may take from a replica: frame size, compression,
number of sockets."""

from __future__ import annotations

import asyncio
import time

from statelab.config import build_settings
from tests.chat.conftest import Cluster
from tests.chat.support import ChatClient, Login, Replica, is_type, login, probe, unique

Pair = tuple[Replica, Replica]


async def test_a_frame_over_the_largest_legitimate_one_closes_the_socket(pair: Pair) -> None:
    r1, _ = pair
    limit = build_settings(profile="stateful").chat_max_frame_bytes
    assert limit < 64 * 1024, "a few KiB, not the server's 16 MiB default"
    alice = await login(r1, unique("alice"))
    client = await ChatClient.open(r1, alice)

    mark = client.mark()
    await client.ws.send("x" * limit)  # as large as allowed: the protocol answers it
    assert (await client.wait(is_type("error"), since=mark))["code"] == "bad_frame"
    await client.ws.send("x" * (limit + 1))
    assert await client.wait_closed(5) == 1009  # "message too big"


async def test_permessage_deflate_is_not_negotiated(pair: Pair) -> None:
    r1, _ = pair
    client = await ChatClient.open(r1, await login(r1, unique("alice")))
    assert client.ws.request is not None and client.ws.response is not None
    assert "permessage-deflate" in client.ws.request.headers["Sec-WebSocket-Extensions"]
    assert "Sec-WebSocket-Extensions" not in client.ws.response.headers
    await probe(client)
    await client.close()


async def _open_when_allowed(target: Replica, who: Login, seconds: float) -> ChatClient:
    """A socket that stays open; the replica may not have seen the last close yet."""
    deadline = time.monotonic() + seconds
    while True:
        client = await ChatClient.open(target, who)
        try:
            await probe(client)
            return client
        except AssertionError:
            if client.close_code != 1008 or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


async def test_sockets_per_user_are_capped(cluster: Cluster) -> None:
    (r1,) = cluster.start("r1", STATELAB_CHAT_SOCKETS_PER_USER="2")
    alice, bob = await login(r1, unique("alice")), await login(r1, unique("bob"))
    first, second = await ChatClient.open(r1, alice), await ChatClient.open(r1, alice)
    over = await ChatClient.open(r1, alice)
    assert await over.wait_closed(5) == 1008
    assert over.ws.close_reason == "too many chat sockets: at most 2 per user on this replica"
    for client in (first, second, bobs := await ChatClient.open(r1, bob)):
        await probe(client)  # the user's others, and other users, are untouched

    await first.close()
    again = await _open_when_allowed(r1, alice, 5)  # a closed socket frees its place
    for client in (second, bobs, again):
        await client.close()
