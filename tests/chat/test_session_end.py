"""A chat socket lives no longer than its session: logout, revocation and expiry
close it (4401) on whichever replica holds it."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from statelab.state import keys
from tests.chat.conftest import Cluster
from tests.chat.support import (
    ChatClient,
    Replica,
    api,
    joined,
    login,
    new_room,
    probe,
    unique,
)

Pair = tuple[Replica, Replica]


async def test_logout_closes_that_sessions_sockets_on_every_replica(pair: Pair) -> None:
    r1, r2 = pair
    name = unique("alice")
    phone, laptop = await login(r1, name), await login(r2, name, register=False)
    room = await new_room(r1, phone)
    on_r1, on_r2 = await joined(r1, phone, room), await joined(r2, phone, room)
    other_device = await joined(r1, laptop, room)

    r = await api(r2, phone, "POST", "/api/auth/logout")
    assert r.status_code == 204, r.text
    # Far sooner than the periodic re-check (30 s here): the logout itself closed them.
    assert await on_r1.wait_closed(5) == 4401
    assert await on_r2.wait_closed(5) == 4401
    assert on_r1.ws.close_reason == "logged out"
    await probe(other_device)
    assert not other_device.closed, "the user's other session keeps its socket"
    await other_device.close()


async def test_a_session_revoked_without_an_event_loses_its_socket(cluster: Cluster) -> None:
    """A revocation nobody announced (another path, an event lost with a replica):
    the socket's periodic re-check finds the session gone."""
    (r1,) = cluster.start("r1", STATELAB_CHAT_SESSION_CHECK_SECONDS="0.3")
    name = unique("bob")
    revoked, kept = await login(r1, name), await login(r1, name, register=False)
    doomed, alive = await ChatClient.open(r1, revoked), await ChatClient.open(r1, kept)
    await probe(doomed)
    sid = revoked.headers["Cookie"].split("statelab_session=")[1].split(";")[0]
    assert cluster.redis_url is not None
    async with aioredis.from_url(cluster.redis_url) as redis:
        assert await redis.delete(keys.session(sid)) == 1

    assert await doomed.wait_closed(5) == 4401
    await probe(alive)
    assert not alive.closed
    await alive.close()


@pytest.mark.parametrize("profile", ["stateful", "stateless", "token"])
async def test_a_socket_closes_when_its_session_or_token_expires(
    cluster: Cluster, profile: str
) -> None:
    """No logout and no re-check due (every 60 s here): the expiry alone closes it."""
    lifetime = {"STATELAB_SESSION_ABSOLUTE_SECONDS": "3", "STATELAB_JWT_TTL_SECONDS": "3"}
    (r1,) = cluster.start(
        "r1", profile=profile, STATELAB_CHAT_SESSION_CHECK_SECONDS="60", **lifetime
    )
    who = await login(r1, unique("cy"))
    client = await ChatClient.open(r1, who)
    assert await client.wait_closed(10) == 4401
    assert client.ws.close_reason == "session expired: log in again"
