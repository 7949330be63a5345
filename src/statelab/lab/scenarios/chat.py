"""C9: can a chat scale out when routing, presence, typing and unread counts live in
shared stores, with users reconnecting to any replica?

Users spread over the replicas talk in one room; one replica is killed
mid-conversation; sockets reconnect through the load balancer, resume from the
last sequence number they saw and re-send what was never acknowledged. Then, with
everyone back: does every replica list every user as online, does a typing
indicator reach users on other replicas, and does every replica report the same
unread count for a user who stopped reading?
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import TypedDict

import httpx

from statelab.lab.chatter import Chatter
from statelab.lab.deployment import replica_urls
from statelab.lab.framework import Context, Played, Scenario, Variant, closing
from statelab.lab.shopper import Shopper


class ChatMetrics(TypedDict):
    users: int
    acknowledged: int
    sent: int
    expected_deliveries: int
    lost: int
    duplicates: int
    out_of_order: int
    reconnects: int
    logins_again: int
    max_reconnect_s: float
    catch_up_s: float | None
    clients_caught_up: int
    replicas_used: list[str]
    replica_killed: str
    presence_correct: bool
    online_seen: dict[str, int]
    typing_correct: bool
    typing_seen_by: int
    unread_correct: bool
    unread_seen: dict[str, int | None]
    unread_expected: int


def delivery(
    chatters: list[Chatter], expected: set[tuple[str, str]], waits: list[float | None]
) -> dict[str, object]:
    lost = duplicates = disorder = 0
    for c in chatters:
        keys = [(sender, msg) for sender, msg, _ in c.received]
        got = set(keys)
        lost += len(expected - got)
        duplicates += len(keys) - len(got)
        seqs = [seq for _, _, seq in c.received]
        disorder += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
    caught_up = [w for w in waits if w is not None]
    reconnects = [s for c in chatters for s in c.reconnect_seconds]
    return {
        "acknowledged": len(expected),
        "sent": sum(len(c.acked) + len(c.pending) for c in chatters),
        "expected_deliveries": len(expected) * len(chatters),
        "lost": lost,
        "duplicates": duplicates,
        "out_of_order": disorder,
        "reconnects": sum(c.reconnects for c in chatters),
        "logins_again": sum(c.relogins for c in chatters),
        "max_reconnect_s": round(max(reconnects, default=0.0), 2),
        "catch_up_s": round(max(caught_up), 2) if caught_up else None,
        "clients_caught_up": len(caught_up),
    }


async def _through_each(
    ctx: Context, user: Shopper, path: str
) -> dict[str, dict[str, object] | None]:
    """``GET path`` as ``user`` through every replica directly."""
    answers: dict[str, dict[str, object] | None] = {}
    for rid, url in sorted((await replica_urls(ctx.deployment)).items()):
        async with httpx.AsyncClient(base_url=url, cookies=dict(user.client.cookies),
                                     timeout=5) as c:  # fmt: skip
            try:
                r = await c.get(path, headers=user.auth)
            except httpx.TransportError:
                answers[rid] = None
                continue
            answers[rid] = r.json() if r.status_code == 200 else None
    return answers


async def _presence(ctx: Context, chatters: list[Chatter]) -> tuple[bool, dict[str, int]]:
    names = {c.shopper.name for c in chatters}
    seen = await _through_each(ctx, chatters[0].shopper, "/api/chat/online")
    listed: dict[str, set[str]] = {
        rid: {str(u) for u in a["users"]} if a else set()  # type: ignore[attr-defined]
        for rid, a in seen.items()
    }
    return all(names <= users for users in listed.values()), {
        rid: len(users & names) for rid, users in listed.items()
    }


async def _typing(chatters: list[Chatter], room: str) -> tuple[bool, int]:
    typist = chatters[-1]
    await typist.send({"type": "typing", "room": room})
    await asyncio.sleep(1.5)
    others = [c for c in chatters if c is not typist]
    saw = sum(typist.shopper.name in c.typists for c in others)
    return saw == len(others), saw


async def _unread(
    ctx: Context, chatters: list[Chatter], room: str
) -> tuple[bool, dict[str, int | None], int]:
    """The last user marks everything read and goes quiet; the others send one
    message each; every replica must count them as unread for that user."""
    reader, talkers = chatters[-1], chatters[:-1]
    await reader.send({"type": "read", "room": room, "seq": reader.last_seq})
    await asyncio.sleep(0.3)
    for c in talkers:
        await c.say(f"{c.shopper.name}-unread", "are you there?")
    await asyncio.gather(*(c.flush(within=ctx.scale(4, 10)) for c in talkers))
    await asyncio.sleep(0.5)
    seen = await _through_each(ctx, reader.shopper, "/api/chat/unread")
    counts: dict[str, int | None] = {
        rid: int(a["rooms"].get(room, 0)) if a else None  # type: ignore[attr-defined]
        for rid, a in seen.items()
    }
    want = len(talkers)
    return all(v == want for v in counts.values()), counts, want


async def play_chat(ctx: Context) -> Played:
    shoppers = [ctx.shopper(f"chat-{i}-{uuid.uuid4().hex[:4]}") for i in range(ctx.scale(4, 8))]
    per_user, pause = ctx.scale(12, 40), 0.15  # about the pace of a quick typist
    ws_url = ctx.url.replace("http://", "ws://") + "/ws/chat"
    chatters: list[Chatter] = []
    try:
        for s in shoppers:
            await s.register_and_login()
        created = await shoppers[0].request("POST", "/api/chat/rooms", json={"name": "lab"})
        assert created is not None and created.status_code == 201, "could not create a room"
        room = str(created.json()["id"])
        for s in shoppers:
            chatter = Chatter(s, ws_url, room)
            await chatter.connect()
            await chatter.join()
            chatters.append(chatter)
        await asyncio.sleep(0.5)
        spread = sorted({c.replica for c in chatters})
        victim = chatters[0].replica

        async def talk(c: Chatter) -> None:
            for k in range(per_user):
                await c.say(f"{c.shopper.name}-{k}", f"message {k}")
                await asyncio.sleep(pause)

        async def crash() -> None:
            await asyncio.sleep(per_user * pause / 2)
            await ctx.deployment.kill(victim)

        await asyncio.gather(crash(), *(talk(c) for c in chatters))
        # A shared store acknowledges a re-sent message within a second of the
        # reconnect; what is still unacknowledged after this never will be.
        await asyncio.gather(*(c.flush(within=ctx.scale(4, 10)) for c in chatters))
        expected = {(c.shopper.name, m) for c in chatters for m in c.acked}
        waits = await asyncio.gather(
            *(c.settle(expected, within=ctx.scale(6, 12)) for c in chatters)
        )
        counted = delivery(chatters, expected, list(waits))
        await ctx.deployment.start(victim)  # everyone back, on any replica
        presence, online = await _presence(ctx, chatters)
        typing, typing_seen = await _typing(chatters, room)
        unread, unread_seen, unread_want = await _unread(ctx, chatters, room)
        metrics = ChatMetrics(
            users=len(chatters),
            **counted,  # type: ignore[typeddict-item]
            replicas_used=spread,
            replica_killed=victim,
            presence_correct=presence,
            online_seen=online,
            typing_correct=typing,
            typing_seen_by=typing_seen,
            unread_correct=unread,
            unread_seen=unread_seen,
            unread_expected=unread_want,
        )
        invariants = {}
        if not ctx.local("chat"):
            invariants = {
                "every acknowledged message delivered": counted["lost"] == 0,
                "no message delivered twice": counted["duplicates"] == 0,
                "in order, without gaps": counted["out_of_order"] == 0,
                "every replica lists every user online": presence,
                "typing reaches every other replica": typing,
                "every replica counts the same unread messages": unread,
            }
        return Played(invariants, dict(metrics), await ctx.timeline())
    finally:
        await asyncio.gather(*(c.close() for c in chatters))
        await closing(*shoppers)


def placements(quick: bool) -> list[Variant]:
    return [Variant("stateful", "stateful"), Variant("stateless")]


SCENARIOS = (
    Scenario("chat", ("C9",), "a room across replicas, one replica killed mid-conversation",
             placements, play_chat,
             lambda m: f"{m['lost']}/{m['expected_deliveries']} deliveries lost, presence "
                       f"{'ok' if m['presence_correct'] else 'wrong'}, typing "
                       f"{'ok' if m['typing_correct'] else 'wrong'}, unread "
                       f"{'ok' if m['unread_correct'] else 'wrong'}"),
)  # fmt: skip
