"""Chat state: rooms, history, read marks, presence, typing and live routing.

WebSocket connections always live in one replica; everything around them is placed:

- ``memory``: rooms, history, read marks, presence and typing in this replica's
  memory, and routing is a function call. Users on different replicas never meet,
  and a replica's death takes its history with it.
- ``redis``: rooms, members, read marks and every message in SQL, each message with
  a per-room sequence number taken in the same transaction that stores it — before
  the sender is acknowledged. Redis holds what may be lost: the presence registry
  (user -> replicas, refreshed by a heartbeat, expiring by itself), who is online,
  who is typing, and live routing through pub/sub: one channel per room, to which
  only the replicas with a socket in the room subscribe, and one channel per replica
  for events aimed at a user.

Messages are stored by group commit (``groupcommit.py``): those that arrive while a
transaction is under way go together into the next one, which locks their rooms'
rows in id order, numbers them in arrival order and inserts them in one statement.
A hot room costs one transaction per batch instead of one per message. Each batch
is routed with one publish per room, carrying its messages in seq order; every
replica watching the room hands them to its own sockets.

Pub/sub keeps nothing: a publish reaches whoever is subscribed at that moment. The
SQL log with its gap-free sequence is the source of truth; a live event is only a hint
that carries the message to save a query. A replica that sees a gap in a room's
sequence, or whose subscription was reconnected, reads the missing range from SQL.
Streams would have kept a second, trimmed copy of the log in Redis for the same
guarantee.

That leaves one hole, which the publisher closes: a batch stored while Redis cannot
take its publish (restarting, failing over) would reach a replica that resubscribed
before it was stored only with its room's next message. So a batch whose publish
fails is kept and published again as soon as Redis answers (after a pause that starts
at ``ROUTE_RETRY_FIRST`` and doubles up to ``ROUTE_RETRY_MAX``), oldest first, and the
batches stored meanwhile queue behind it, so a room's frames still leave in seq order.
A frame may then reach a replica twice (its subscription came back in time, or a
cluster took part of a publish); sockets skip seqs they were already sent. At most
``MAX_UNROUTED`` messages are kept: older ones are let go and reach readers from
history, through the gap the room's next routed message shows or the resync of a
reconnected subscription.

Unread counts are derived, not counted: ``rooms.last_seq - members.last_read_seq``.
Sending marks the room read up to one's own message, so the difference is exactly the
messages the member has not seen, costs no write per member per message and can
never drift.

The store tells its replica about live events through a ``ChatListener``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from itertools import islice
from typing import Any, Protocol, TypeVar

import orjson
from redis.asyncio import RedisCluster
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from sqlalchemy import Row, and_, bindparam, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from statelab.db import models
from statelab.domain.errors import LimitExceeded, NotFound, Unavailable
from statelab.state import keys
from statelab.state.errors import store_guard
from statelab.state.groupcommit import GroupCommit
from statelab.state.redisclient import RedisClient

log = logging.getLogger(__name__)

#: Messages one room keeps in the ``memory`` placement; older ones are forgotten.
MEMORY_HISTORY = 10_000
#: How long a replica waits for Redis to confirm a new subscription.
SUBSCRIBE_TIMEOUT = 3.0
#: Most messages one transaction stores; more wait for the next one. It bounds the
#: statements' parameters (three per message to look up resends) and a batch's time.
MAX_BATCH = 256
#: Most stored messages a replica keeps to publish again while Redis cannot take them
#: (besides the ``MAX_BATCH`` being published): at the default 2000-character limit,
#: about 8 MB of ASCII text at worst. That is minutes of a busy replica's chat, far more
#: than a restart or a failover takes. Past it the oldest kept messages are let go, and
#: readers catch up on them from history (a room's next message shows the gap; a
#: subscription that reconnects resyncs).
MAX_UNROUTED = 4096
#: First pause before publishing the kept messages again; it doubles up to the next.
ROUTE_RETRY_FIRST = 0.05
#: Longest pause between two attempts: how late a replica may route after Redis is back.
ROUTE_RETRY_MAX = 1.0
#: How long ``close_log`` tries once more to publish what is kept before letting it go.
CLOSE_ROUTE_GRACE = 1.0

Event = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Room:
    id: str
    name: str
    last_seq: int


@dataclass(frozen=True, slots=True)
class Message:
    """A stored chat message; ``seq`` numbers a room's messages 1, 2, 3... without gaps."""

    room: str
    seq: int
    sender_id: int
    sender: str
    text: str
    client_msg_id: str
    sent_at: datetime

    def frame(self) -> Event:
        """The ``message`` frame clients receive, live or when catching up."""
        return {
            "type": "message",
            "room": self.room,
            "seq": self.seq,
            "sender": self.sender,
            "text": self.text,
            "client_msg_id": self.client_msg_id,
            "sent_at": _iso(self.sent_at),
        }


@dataclass(frozen=True, slots=True)
class Posted:
    """The stored message, and whether this call stored it (False: a resend)."""

    message: Message
    new: bool


@dataclass(frozen=True, slots=True)
class ChatLimits:
    rooms_per_user: int
    presence_ttl: float
    typing_ttl: float


class ChatListener(Protocol):
    """What a replica's connection hub hears from the chat store."""

    async def room_event(self, room_id: str, event: Event) -> None:
        """A live frame for the room's sockets (message, typing or presence)."""
        ...

    async def user_event(self, user_id: int, event: Event) -> None:
        """An event for one user's sockets on this replica (close, unread)."""
        ...

    async def resync(self) -> None:
        """Live events may have been missed: catch every socket up from history."""
        ...

    async def gone(self, user_id: int, username: str) -> None:
        """The user's presence expired (their replica died): announce it."""
        ...


class ChatStore(Protocol):
    """Where chat state lives. Every placement answers the same calls."""

    name: str
    limits: ChatLimits

    async def start(self, listener: ChatListener) -> None:
        """Begin routing live events to ``listener`` (and any background upkeep)."""
        ...

    async def stop(self) -> None: ...

    # rooms and membership
    async def create_room(self, name: str, user_id: int) -> Room: ...

    async def join(self, room_id: str, user_id: int) -> Room:
        """Become a member (idempotent); earlier messages count as read."""
        ...

    async def leave(self, room_id: str, user_id: int) -> None: ...

    async def room(self, room_id: str, user_id: int) -> Room:
        """The room, if the user is a member; ``NotFound`` otherwise."""
        ...

    async def rooms_of(self, user_id: int) -> list[Room]: ...

    # messages and read marks
    async def post(
        self, room_id: str, user_id: int, username: str, client_msg_id: str, text: str
    ) -> Posted:
        """Store a message with the room's next ``seq``, once per ``client_msg_id``, and
        route it live to every replica watching the room (a resend is routed again: the
        first copy may have died with its replica between storing and routing)."""
        ...

    async def history(self, room_id: str, after: int, limit: int) -> list[Message]:
        """Messages with ``seq > after`` in order, at most ``limit``."""
        ...

    async def last_seq(self, room_id: str) -> int: ...

    async def last_seqs(self, room_ids: list[str]) -> dict[str, int]:
        """The newest sequence number of each room (one query)."""
        ...

    async def mark_read(self, room_id: str, user_id: int, seq: int) -> int:
        """Move the user's read mark forward to ``seq``; returns the unread count."""
        ...

    async def unread(self, user_id: int) -> dict[str, int]: ...

    # presence and typing
    async def enter(self, user_id: int, username: str) -> bool:
        """The user's first socket on this replica opened; True if they came online."""
        ...

    async def exit(self, user_id: int, username: str) -> bool:
        """The user's last socket on this replica closed; True if they went offline."""
        ...

    async def online(self, limit: int) -> list[str]: ...

    async def online_in(self, room_id: str) -> list[str]:
        """Usernames of the room's members who are online."""
        ...

    async def typing(self, room_id: str, username: str) -> None: ...

    async def typists(self, room_id: str) -> list[str]:
        """Who typed in the room within the typing TTL."""
        ...

    # live routing
    async def watch(self, room_id: str) -> None:
        """Deliver the room's live events here from now on (returns once they will)."""
        ...

    async def unwatch(self, room_id: str) -> None: ...

    async def publish(self, room_id: str, event: Event) -> None:
        """Send a live event to every replica watching the room, this one included."""
        ...

    async def tell_elsewhere(self, user_id: int, event: Event) -> None:
        """Send an event to the user's sockets on the other replicas."""
        ...


def _iso(at: datetime) -> str:
    return _utc(at).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _utc(at: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _now() -> datetime:
    # Millisecond precision, so a live frame and the stored row print the same.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def new_room_id() -> str:
    """96 random bits: room ids are handed around, so they must not be guessable."""
    return secrets.token_urlsafe(12)


def _too_many_rooms(limit: int) -> LimitExceeded:
    return LimitExceeded(f"a user may be in at most {limit} rooms; leave one first")


def _not_member(room_id: str) -> NotFound:
    return NotFound(f"room {room_id!r} not found, or you are not a member (join it first)")


# ---------------------------------------------------------------------------- memory


@dataclass
class _MemoryRoom:
    name: str
    last_seq: int = 0
    members: dict[int, int] = field(default_factory=dict)  # user id -> last read seq
    messages: deque[Message] = field(default_factory=lambda: deque(maxlen=MEMORY_HISTORY))
    by_client: dict[tuple[int, str], int] = field(default_factory=dict)
    typing: dict[str, float] = field(default_factory=dict)  # username -> monotonic deadline


class MemoryChat:
    """Chat state in this replica. Each call runs without awaiting in between, so
    the event loop makes it atomic — within this replica, which is all it knows."""

    name = "memory"

    def __init__(self, limits: ChatLimits) -> None:
        self.limits = limits
        self._rooms: dict[str, _MemoryRoom] = {}
        self._rooms_of: dict[int, set[str]] = {}
        self._present: dict[int, str] = {}
        self._listener: ChatListener | None = None

    async def start(self, listener: ChatListener) -> None:
        self._listener = listener

    async def stop(self) -> None:
        self._listener = None

    def _member_room(self, room_id: str, user_id: int) -> _MemoryRoom:
        room = self._rooms.get(room_id)
        if room is None or user_id not in room.members:
            raise _not_member(room_id)
        return room

    def _check_room_limit(self, user_id: int) -> None:
        if len(self._rooms_of.get(user_id, ())) >= self.limits.rooms_per_user:
            raise _too_many_rooms(self.limits.rooms_per_user)

    async def create_room(self, name: str, user_id: int) -> Room:
        self._check_room_limit(user_id)
        room_id = new_room_id()
        self._rooms[room_id] = _MemoryRoom(name=name, members={user_id: 0})
        self._rooms_of.setdefault(user_id, set()).add(room_id)
        return Room(room_id, name, 0)

    async def join(self, room_id: str, user_id: int) -> Room:
        room = self._rooms.get(room_id)
        if room is None:
            raise NotFound(f"room {room_id!r} not found")
        if user_id not in room.members:
            self._check_room_limit(user_id)
            room.members[user_id] = room.last_seq
            self._rooms_of.setdefault(user_id, set()).add(room_id)
        return Room(room_id, room.name, room.last_seq)

    async def leave(self, room_id: str, user_id: int) -> None:
        room = self._member_room(room_id, user_id)
        del room.members[user_id]
        self._rooms_of.get(user_id, set()).discard(room_id)

    async def room(self, room_id: str, user_id: int) -> Room:
        room = self._member_room(room_id, user_id)
        return Room(room_id, room.name, room.last_seq)

    async def rooms_of(self, user_id: int) -> list[Room]:
        ids = sorted(self._rooms_of.get(user_id, ()))
        return [Room(i, self._rooms[i].name, self._rooms[i].last_seq) for i in ids]

    async def post(
        self, room_id: str, user_id: int, username: str, client_msg_id: str, text: str
    ) -> Posted:
        room = self._member_room(room_id, user_id)
        seen = room.by_client.get((user_id, client_msg_id))
        if seen is not None:
            old = self._at(room, seen)
            if old is not None:
                await self.publish(room_id, old.frame())
                return Posted(old, new=False)
        room.last_seq += 1
        message = Message(room_id, room.last_seq, user_id, username, text, client_msg_id, _now())
        if len(room.messages) == room.messages.maxlen:
            oldest = room.messages[0]
            room.by_client.pop((oldest.sender_id, oldest.client_msg_id), None)
        room.messages.append(message)
        room.by_client[(user_id, client_msg_id)] = message.seq
        room.members[user_id] = message.seq
        await self.publish(room_id, message.frame())
        return Posted(message, new=True)

    @staticmethod
    def _at(room: _MemoryRoom, seq: int) -> Message | None:
        if not room.messages:
            return None
        index = seq - room.messages[0].seq
        return room.messages[index] if 0 <= index < len(room.messages) else None

    async def history(self, room_id: str, after: int, limit: int) -> list[Message]:
        room = self._rooms.get(room_id)
        if room is None or not room.messages:
            return []
        start = max(0, after + 1 - room.messages[0].seq)
        return list(islice(room.messages, start, start + limit))

    async def last_seq(self, room_id: str) -> int:
        room = self._rooms.get(room_id)
        return room.last_seq if room is not None else 0

    async def last_seqs(self, room_ids: list[str]) -> dict[str, int]:
        return {r: self._rooms[r].last_seq for r in room_ids if r in self._rooms}

    async def mark_read(self, room_id: str, user_id: int, seq: int) -> int:
        room = self._member_room(room_id, user_id)
        room.members[user_id] = max(room.members[user_id], min(seq, room.last_seq))
        return room.last_seq - room.members[user_id]

    async def unread(self, user_id: int) -> dict[str, int]:
        out = {}
        for room_id in sorted(self._rooms_of.get(user_id, ())):
            room = self._rooms[room_id]
            out[room_id] = room.last_seq - room.members[user_id]
        return out

    async def enter(self, user_id: int, username: str) -> bool:
        self._present[user_id] = username
        return True

    async def exit(self, user_id: int, username: str) -> bool:
        return self._present.pop(user_id, None) is not None

    async def online(self, limit: int) -> list[str]:
        return sorted(self._present.values())[:limit]

    async def online_in(self, room_id: str) -> list[str]:
        room = self._rooms.get(room_id)
        if room is None:
            return []
        return sorted(self._present[u] for u in room.members if u in self._present)

    async def typing(self, room_id: str, username: str) -> None:
        room = self._rooms.get(room_id)
        if room is not None:
            now = time.monotonic()
            room.typing = {u: t for u, t in room.typing.items() if t > now}
            room.typing[username] = now + self.limits.typing_ttl

    async def typists(self, room_id: str) -> list[str]:
        room = self._rooms.get(room_id)
        now = time.monotonic()
        return sorted(u for u, t in room.typing.items() if t > now) if room else []

    async def watch(self, room_id: str) -> None:
        return None

    async def unwatch(self, room_id: str) -> None:
        return None

    async def publish(self, room_id: str, event: Event) -> None:
        if self._listener is not None:
            await self._listener.room_event(room_id, event)

    async def tell_elsewhere(self, user_id: int, event: Event) -> None:
        return None  # there is no elsewhere: every socket of a session is here


# ------------------------------------------------------------------------------- SQL


def _message(row: models.ChatMessage | Row[Any]) -> Message:
    return Message(
        room=row.room_id,
        seq=int(row.seq),
        sender_id=int(row.sender_id),
        sender=row.sender,
        text=row.text,
        client_msg_id=row.client_msg_id,
        sent_at=_utc(row.sent_at),
    )


@dataclass(frozen=True, slots=True)
class _Post:
    """A message as it arrived, waiting for its group commit."""

    room: str
    sender_id: int
    sender: str
    client_msg_id: str
    text: str
    sent_at: datetime

    @property
    def key(self) -> tuple[str, int, str]:
        """What makes a message unique: a resend carries the same."""
        return (self.room, self.sender_id, self.client_msg_id)


async def _store_batch(conn: AsyncConnection, *, posts: list[_Post]) -> list[Posted | Exception]:
    """Store ``posts`` in the transaction of ``conn``: one result per post, in order.

    First, without a lock, one query says which senders are members of the rooms
    they post to and which posts were stored before (resends). Then the new ones are
    numbered: the rooms' rows are locked and their ``last_seq`` moved past their new
    messages, which are inserted under the numbers handed out, in the order they
    came. The rooms stay locked only for the writes and the commit.

    A resend another replica stored between the check and the lock breaks the unique
    ``(room, sender, client_msg_id)``: ``IntegrityError``, the transaction (numbers
    included) rolls back, and a retry finds the stored message."""
    members, known = await _checked(conn, posts)
    allowed = [post for post in posts if (post.room, post.sender_id) in members]
    counts: dict[str, int] = {}  # new messages per room
    place: dict[tuple[str, int, str], int] = {}  # a new message's place among its room's
    for post in allowed:
        if post.key not in known and post.key not in place:
            counts[post.room] = counts.get(post.room, 0) + 1
            place[post.key] = counts[post.room]
    last = await _take_seqs(conn, counts) if counts else {}
    fresh: dict[tuple[str, int, str], Message] = {}
    for post in allowed:
        if post.key in place and post.key not in fresh:
            seq = last[post.room] - counts[post.room] + place[post.key]
            fresh[post.key] = Message(
                post.room, seq, post.sender_id, post.sender, post.text, post.client_msg_id,
                post.sent_at,
            )  # fmt: skip
    if fresh:
        await _append(conn, list(fresh.values()))
    return _outcomes(posts, members, known, fresh)


def _outcomes(
    posts: list[_Post],
    members: set[tuple[str, int]],
    known: dict[tuple[str, int, str], Message],
    fresh: dict[tuple[str, int, str], Message],
) -> list[Posted | Exception]:
    """Each post's result: stored now (its first copy in the batch), stored before (a
    resend, or a copy later in the batch), or refused (not a member)."""
    results: list[Posted | Exception] = []
    first = set(fresh)
    for post in posts:
        if (post.room, post.sender_id) not in members:
            results.append(_not_member(post.room))
        elif post.key in first:
            first.discard(post.key)
            results.append(Posted(fresh[post.key], new=True))
        else:
            results.append(Posted(known.get(post.key) or fresh[post.key], new=False))
    return results


# The statements of a batch, built once: a statement built per call costs more
# (construction, cache key) than sending it. Lists go in expanding parameters.
_MEMBER, _MESSAGE, _ROOM = (
    models.ChatMember.__table__,
    models.ChatMessage.__table__,
    models.ChatRoom.__table__,
)
#: Memberships of the batch's senders in its rooms, each joined with what its member
#: stored under the batch's client ids (a superset of the posts: sorted out after).
_CHECK = (
    select(_MEMBER.c.room_id.label("member_room"), _MEMBER.c.user_id.label("member"), _MESSAGE)
    .select_from(
        _MEMBER.outerjoin(
            _MESSAGE,
            and_(
                _MESSAGE.c.room_id == _MEMBER.c.room_id,
                _MESSAGE.c.sender_id == _MEMBER.c.user_id,
                _MESSAGE.c.client_msg_id.in_(bindparam("ids", expanding=True)),
            ),
        )
    )
    .where(
        _MEMBER.c.room_id.in_(bindparam("rooms", expanding=True)),
        _MEMBER.c.user_id.in_(bindparam("users", expanding=True)),
    )
)
#: One room: its row lock, and ``count`` numbers past its ``last_seq``.
_TAKE_SEQS = (
    update(models.ChatRoom)
    .where(models.ChatRoom.id == bindparam("b_room"))
    .values(last_seq=models.ChatRoom.last_seq + bindparam("b_count"))
    .returning(models.ChatRoom.last_seq)
)
#: Several rooms: their row locks in id order, and where they are.
_LOCK_ROOMS = (
    select(_ROOM.c.id, _ROOM.c.last_seq)
    .where(_ROOM.c.id.in_(bindparam("rooms", expanding=True)))
    .order_by(_ROOM.c.id)
    .with_for_update()
)
_SET_SEQ = (
    update(models.ChatRoom)
    .where(models.ChatRoom.id == bindparam("b_room"))
    .values(last_seq=bindparam("b_seq"))
)
_INSERT = insert(models.ChatMessage)
#: Move a read mark forward (never back).
_READ_TO = (
    update(models.ChatMember)
    .where(
        models.ChatMember.room_id == bindparam("b_room"),
        models.ChatMember.user_id == bindparam("b_user"),
        models.ChatMember.last_read_seq < bindparam("b_seq"),
    )
    .values(last_read_seq=bindparam("b_seq"))
)


async def _checked(
    conn: AsyncConnection, posts: list[_Post]
) -> tuple[set[tuple[str, int]], dict[tuple[str, int, str], Message]]:
    """Which ``(room, sender)`` pairs are memberships, and the messages already stored
    under the posts' ``(room, sender, client_msg_id)``: one query for both."""
    rows = await conn.execute(
        _CHECK,
        {
            "rooms": sorted({post.room for post in posts}),
            "users": sorted({post.sender_id for post in posts}),
            "ids": sorted({post.client_msg_id for post in posts}),
        },
    )
    wanted = {post.key for post in posts}
    members: set[tuple[str, int]] = set()
    known: dict[tuple[str, int, str], Message] = {}
    for row in rows:
        members.add((row.member_room, int(row.member)))
        key = (row.room_id, row.sender_id, row.client_msg_id)
        if row.seq is not None and key in wanted:
            known[key] = _message(row)
    return members, known


async def _take_seqs(conn: AsyncConnection, counts: dict[str, int]) -> dict[str, int]:
    """Move each room's ``last_seq`` on by its count of new messages; the new values.
    One room takes one UPDATE. Several are locked first, in id order, so that two
    replicas' batches wait for each other instead of deadlocking (SQLite's writer
    holds the whole database already; the order changes nothing there)."""
    if len(counts) == 1:
        ((room, count),) = counts.items()
        seq = (await conn.execute(_TAKE_SEQS, {"b_room": room, "b_count": count})).scalar_one()
        return {room: int(seq)}
    rows = await conn.execute(_LOCK_ROOMS, {"rooms": sorted(counts)})
    last = {row.id: int(row.last_seq) + counts[row.id] for row in rows}
    await conn.execute(_SET_SEQ, [{"b_room": r, "b_seq": seq} for r, seq in last.items()])
    return last


async def _append(conn: AsyncConnection, fresh: list[Message]) -> None:
    """Insert the new messages and move their senders' read marks to them."""
    await conn.execute(
        _INSERT,
        [
            {"room_id": m.room, "seq": m.seq, "sender_id": m.sender_id, "sender": m.sender,
             "text": m.text, "client_msg_id": m.client_msg_id, "sent_at": m.sent_at}
            for m in fresh
        ],
    )  # fmt: skip
    read: dict[tuple[str, int], int] = {}
    for m in fresh:
        read[(m.room, m.sender_id)] = max(m.seq, read.get((m.room, m.sender_id), 0))
    await conn.execute(
        _READ_TO,
        [{"b_room": r, "b_user": u, "b_seq": seq} for (r, u), seq in sorted(read.items())],
    )


class _Writer:
    """The one connection the group commit writes through, kept between batches: a
    batch then pays for no pool checkout, and for neither its liveness ping nor the
    rollback on return (two round trips of eight). Batches come one at a time, so
    one connection is all they need.

    The ping was what noticed a connection the database had dropped (a restart):
    now the first batch to find it dead is tried once more on a fresh connection,
    which is safe because storing a message again changes nothing."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``work`` in a transaction of the kept connection, committed at the end."""
        for attempt in (1, 2):
            if self._conn is None or self._conn.invalidated or self._conn.closed:
                self._conn = await self._engine.connect()
            try:
                async with self._conn.begin():
                    return await work(self._conn)
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
                await self.close()
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


class SqlRooms:
    """Rooms, members, read marks and the message log in the shared SQL database."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], limits: ChatLimits) -> None:
        self._sessions = sessions
        self.limits = limits
        self._log: GroupCommit[_Post, Posted] = GroupCommit(self._commit, MAX_BATCH)
        self._writer = _Writer(sessions.kw["bind"])  # the engine the sessions are bound to
        self._routing: asyncio.Task[None] | None = None  # the last batch's, while it runs
        # Stored messages whose publish failed, oldest first, and the task publishing
        # them again: while it runs, newer batches queue behind them instead.
        self._unrouted: deque[Posted] = deque()
        self._rerouting: asyncio.Task[None] | None = None
        self._let_go = 0  # kept messages dropped past MAX_UNROUTED since the last success

    async def _room_count(self, db: AsyncSession, user_id: int) -> int:
        member = models.ChatMember
        query = select(func.count()).select_from(member).where(member.user_id == user_id)
        return int(await db.scalar(query) or 0)

    async def create_room(self, name: str, user_id: int) -> Room:
        room_id = new_room_id()
        with store_guard("database"):
            async with self._sessions() as db, db.begin():
                if await self._room_count(db, user_id) >= self.limits.rooms_per_user:
                    raise _too_many_rooms(self.limits.rooms_per_user)
                db.add(models.ChatRoom(id=room_id, name=name, created_by=user_id, last_seq=0))
                await db.flush()
                db.add(models.ChatMember(room_id=room_id, user_id=user_id, last_read_seq=0))
        return Room(room_id, name, 0)

    async def join(self, room_id: str, user_id: int) -> Room:
        try:
            with store_guard("database"):
                async with self._sessions() as db, db.begin():
                    row = await db.get(models.ChatRoom, room_id)
                    if row is None:
                        raise NotFound(f"room {room_id!r} not found")
                    room = Room(row.id, row.name, int(row.last_seq))
                    if await db.get(models.ChatMember, (room_id, user_id)) is not None:
                        return room
                    if await self._room_count(db, user_id) >= self.limits.rooms_per_user:
                        raise _too_many_rooms(self.limits.rooms_per_user)
                    db.add(
                        models.ChatMember(
                            room_id=room_id, user_id=user_id, last_read_seq=room.last_seq
                        )
                    )
        except IntegrityError:  # joined at the same moment through another socket
            return await self.room(room_id, user_id)
        return room

    async def leave(self, room_id: str, user_id: int) -> None:
        with store_guard("database"):
            async with self._sessions() as db, db.begin():
                member = await db.get(models.ChatMember, (room_id, user_id))
                if member is None:
                    raise _not_member(room_id)
                await db.delete(member)

    async def room(self, room_id: str, user_id: int) -> Room:
        room, member = models.ChatRoom, models.ChatMember
        with store_guard("database"):
            async with self._sessions() as db:
                row = (
                    await db.execute(
                        select(room.id, room.name, room.last_seq)
                        .join(member, member.room_id == room.id)
                        .where(room.id == room_id, member.user_id == user_id)
                    )
                ).first()
        if row is None:
            raise _not_member(room_id)
        return Room(row.id, row.name, int(row.last_seq))

    async def rooms_of(self, user_id: int) -> list[Room]:
        room, member = models.ChatRoom, models.ChatMember
        with store_guard("database"):
            async with self._sessions() as db:
                rows = await db.execute(
                    select(room.id, room.name, room.last_seq)
                    .join(member, member.room_id == room.id)
                    .where(member.user_id == user_id)
                    .order_by(room.id)
                )
                return [Room(r.id, r.name, int(r.last_seq)) for r in rows]

    async def post(
        self, room_id: str, user_id: int, username: str, client_msg_id: str, text: str
    ) -> Posted:
        """Hand the message to the group commit; answer once its transaction committed
        (and the batch was routed)."""
        return await self._log.submit(
            _Post(room_id, user_id, username, client_msg_id, text, _now())
        )

    async def close_log(self) -> None:
        """Commit the messages still queued (briefly), then refuse the rest; publish the
        ones kept after a failed publish once more (briefly), then leave them to history."""
        await self._log.close()
        await self._writer.close()
        if self._routing is not None:
            await asyncio.wait([self._routing])
        await self._stop_rerouting()

    async def _commit(self, posts: list[_Post]) -> list[Posted | Exception]:
        """Store a batch in one transaction, then have it routed. A constraint the batch
        breaks (a resend another replica stored a moment ago) rolls it all back: then
        each message is tried again alone, and only one still at fault fails."""
        try:
            results = await self._store(posts)
        except IntegrityError:
            results = [await self._store_alone(post) for post in posts]
        await self._route_next([r for r in results if isinstance(r, Posted)])
        return results

    async def _route_next(self, posted: list[Posted]) -> None:
        """Route a committed batch while the next one is stored: its acks need not wait
        for the publish, nor the next batch for it. Batches are routed one after the
        other, in order, so a room's frames leave in seq order; waiting here for the
        previous batch's routing keeps at most one behind."""
        if self._routing is not None:
            await asyncio.wait([self._routing])
        self._routing = asyncio.create_task(self._route_logged(posted)) if posted else None

    async def _route_logged(self, posted: list[Posted]) -> None:
        """Route a batch, or queue it behind the kept ones while they wait to be routed
        again. A batch the router cannot take now (``Unavailable``) is kept, and a task
        routes the kept messages as soon as it can."""
        if self._rerouting is not None:
            self._keep(posted)
            return
        try:
            await self._route(posted)
        except Unavailable as exc:
            log.warning(
                "%d stored messages not routed (%s): routing them again when it answers",
                len(posted), exc,
            )  # fmt: skip
            self._keep(posted)
            self._rerouting = asyncio.create_task(self._reroute(), name="chat-reroute")
        except Exception:  # a fault of ours, which another try would meet again
            log.exception("%d stored messages were not routed", len(posted))

    def _keep(self, posted: list[Posted]) -> None:
        self._unrouted.extend(posted)
        self._trim()

    def _put_back(self, chunk: list[Posted]) -> None:
        """Return a chunk that was not routed to the front: it is older than the rest."""
        self._unrouted.extendleft(reversed(chunk))
        self._trim()

    def _trim(self) -> None:
        """Let the oldest kept messages go past ``MAX_UNROUTED`` (history has them)."""
        while len(self._unrouted) > MAX_UNROUTED:
            self._unrouted.popleft()
            self._let_go += 1

    async def _reroute(self) -> None:
        """Route the kept messages again, after a pause that doubles from
        ``ROUTE_RETRY_FIRST`` up to ``ROUTE_RETRY_MAX``, until none is left. It ends
        without awaiting after the last one is routed, so a batch either finds it
        running (and queues behind it) or finds nothing kept (and is routed itself)."""
        started, delay = time.monotonic(), ROUTE_RETRY_FIRST
        try:
            while True:
                await asyncio.sleep(delay)
                if await self._route_kept():
                    break
                delay = min(delay * 2, ROUTE_RETRY_MAX)
        finally:
            self._rerouting = None
        took = time.monotonic() - started
        if self._let_go:
            log.warning(
                "routing answers again after %.1f s: kept messages routed; %d older ones"
                " were let go (readers find them in history)",
                took, self._let_go,
            )  # fmt: skip
        else:
            log.info("routing answers again after %.1f s: kept messages routed", took)
        self._let_go = 0

    async def _route_kept(self) -> bool:
        """Route the kept messages oldest first, ``MAX_BATCH`` at a time; True once none
        is left, False when the router failed again (the rest stay kept, in order)."""
        while self._unrouted:
            count = min(MAX_BATCH, len(self._unrouted))
            chunk = [self._unrouted.popleft() for _ in range(count)]
            try:
                await self._route(chunk)
            except Unavailable:
                self._put_back(chunk)
                return False
            except asyncio.CancelledError:
                self._put_back(chunk)
                raise
            except Exception:  # a fault of ours, which another try would meet again
                log.exception("%d stored messages were not routed", len(chunk))
        return True

    async def _stop_rerouting(self) -> None:
        """Stop the retries, try the kept messages once more (for ``CLOSE_ROUTE_GRACE``
        seconds at most), then let them go: readers find them in history."""
        task = self._rerouting
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])
        self._rerouting = None  # a task cancelled before it ran never cleared it
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._route_kept(), CLOSE_ROUTE_GRACE)
        if self._unrouted:
            log.warning(
                "%d stored messages left unrouted at shutdown (readers find them in history)",
                len(self._unrouted),
            )
            self._unrouted.clear()

    async def _store_alone(self, post: _Post) -> Posted | Exception:
        try:
            return (await self._store([post]))[0]
        except IntegrityError as exc:
            return exc

    async def _store(self, posts: list[_Post]) -> list[Posted | Exception]:
        with store_guard("database"):
            return await self._writer.run(partial(_store_batch, posts=posts))

    async def _route(self, posted: list[Posted]) -> None:
        """Send committed messages to the replicas watching their rooms (``RedisChat``);
        ``Unavailable`` when the router cannot take them now (they are kept and sent
        again)."""
        return None

    @staticmethod
    async def _read_to(db: AsyncSession, room_id: str, user_id: int, seq: int) -> None:
        member = models.ChatMember
        await db.execute(
            update(member)
            .where(
                member.room_id == room_id,
                member.user_id == user_id,
                member.last_read_seq < seq,
            )
            .values(last_read_seq=seq)
        )

    async def history(self, room_id: str, after: int, limit: int) -> list[Message]:
        msg = models.ChatMessage
        with store_guard("database"):
            async with self._sessions() as db:
                rows = await db.scalars(
                    select(msg)
                    .where(msg.room_id == room_id, msg.seq > after)
                    .order_by(msg.seq)
                    .limit(limit)
                )
                return [_message(r) for r in rows]

    async def last_seq(self, room_id: str) -> int:
        with store_guard("database"):
            async with self._sessions() as db:
                value = await db.scalar(
                    select(models.ChatRoom.last_seq).where(models.ChatRoom.id == room_id)
                )
        return int(value or 0)

    async def last_seqs(self, room_ids: list[str]) -> dict[str, int]:
        room = models.ChatRoom
        with store_guard("database"):
            async with self._sessions() as db:
                rows = await db.execute(select(room.id, room.last_seq).where(room.id.in_(room_ids)))
        return {str(r.id): int(r.last_seq) for r in rows}

    async def mark_read(self, room_id: str, user_id: int, seq: int) -> int:
        with store_guard("database"):
            async with self._sessions() as db, db.begin():
                last = await db.scalar(
                    select(models.ChatRoom.last_seq).where(models.ChatRoom.id == room_id)
                )
                await self._read_to(db, room_id, user_id, min(seq, int(last or 0)))
                read = await db.scalar(
                    select(models.ChatMember.last_read_seq).where(
                        models.ChatMember.room_id == room_id, models.ChatMember.user_id == user_id
                    )
                )
        if last is None or read is None:
            raise _not_member(room_id)
        return int(last) - int(read)

    async def unread(self, user_id: int) -> dict[str, int]:
        room, member = models.ChatRoom, models.ChatMember
        with store_guard("database"):
            async with self._sessions() as db:
                rows = await db.execute(
                    select(room.id, room.last_seq - member.last_read_seq)
                    .join(member, and_(member.room_id == room.id, member.user_id == user_id))
                    .order_by(room.id)
                )
                return {r[0]: int(r[1]) for r in rows}

    async def members(self, room_id: str) -> list[tuple[int, str]]:
        member, user = models.ChatMember, models.User
        with store_guard("database"):
            async with self._sessions() as db:
                rows = await db.execute(
                    select(user.id, user.username)
                    .join(member, member.user_id == user.id)
                    .where(member.room_id == room_id)
                )
                return [(int(r.id), r.username) for r in rows]


# ----------------------------------------------------------------------------- redis

# Came online: refresh this replica's registry entry; 1 if the user was not online.
_ENTER = """
local before = redis.call('ZSCORE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], 'GT', ARGV[4], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
if before and tonumber(before) > tonumber(ARGV[3]) then return 0 end
return 1
"""

# Last socket here closed: drop this replica; 1 if no live replica holds the user.
_EXIT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
return redis.call('ZREM', KEYS[2], ARGV[2])
"""

# Users whose every replica stopped refreshing them; each is returned to one caller.
_SWEEP = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #gone > 0 then redis.call('ZREM', KEYS[1], unpack(gone)) end
return gone
"""


def _ms() -> int:
    return int(time.time() * 1000)


def _online_member(user_id: int, username: str) -> str:
    return f"{user_id}:{username}"


def _split_member(member: str) -> tuple[int, str]:
    uid, _, name = member.partition(":")
    return int(uid), name


class RedisChat(SqlRooms):
    """The log in SQL; presence, typing and live routing in Redis."""

    name = "redis"

    def __init__(
        self,
        redis: RedisClient,
        sessions: async_sessionmaker[AsyncSession],
        limits: ChatLimits,
        replica_id: str,
    ) -> None:
        super().__init__(sessions, limits)
        self._redis = redis
        self._replica = replica_id
        self._local: dict[int, str] = {}  # users with a socket on this replica
        self._rooms: set[str] = set()  # rooms this replica subscribes to
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._confirmed: set[str] = set()
        self._pubsub: PubSub | None = None
        self._listener: ChatListener | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._enter = redis.register_script(_ENTER)
        self._exit = redis.register_script(_EXIT)
        self._sweep = redis.register_script(_SWEEP)

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.limits.presence_ttl * 1000))

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, listener: ChatListener) -> None:
        """Start the subscriber and the presence heartbeat; wait (briefly) until the
        replica's own channel is subscribed, so events aimed at it are not missed."""
        self._listener = listener
        mine = keys.chat_replica_channel(self._replica)
        ready = asyncio.get_running_loop().create_future()
        self._pending[mine] = ready
        self._tasks = [
            asyncio.create_task(self._subscriber(), name="chat-subscriber"),
            asyncio.create_task(self._heartbeat(), name="chat-heartbeat"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ready), SUBSCRIBE_TIMEOUT)

    async def stop(self) -> None:
        """Commit the messages still queued, stop the background tasks and take this
        replica's users out of the registry now, rather than after the TTL."""
        await self.close_log()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for user_id, username in list(self._local.items()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.exit(user_id, username), 1.0)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None
        self._listener = None

    # -- presence --------------------------------------------------------------------

    async def enter(self, user_id: int, username: str) -> bool:
        self._local[user_id] = username
        now = _ms()
        with store_guard("redis"):
            fresh = await self._enter(
                keys=[keys.chat_where(user_id), keys.chat_online()],
                args=[
                    self._replica,
                    _online_member(user_id, username),
                    now,
                    now + self._ttl_ms,
                    self._ttl_ms,
                ],
            )
        return bool(int(fresh))

    async def exit(self, user_id: int, username: str) -> bool:
        self._local.pop(user_id, None)
        with store_guard("redis"):
            gone = await self._exit(
                keys=[keys.chat_where(user_id), keys.chat_online()],
                args=[self._replica, _online_member(user_id, username), _ms()],
            )
        return bool(int(gone))

    async def online(self, limit: int) -> list[str]:
        with store_guard("redis"):
            members = await self._redis.zrangebyscore(
                keys.chat_online(), _ms(), "+inf", start=0, num=limit
            )
        return sorted(_split_member(str(m))[1] for m in members)

    async def online_in(self, room_id: str) -> list[str]:
        members = await self.members(room_id)
        if not members:
            return []
        names = [_online_member(uid, name) for uid, name in members]
        with store_guard("redis"):
            scores = await self._redis.zmscore(keys.chat_online(), names)
        now = _ms()
        return sorted(
            name
            for (_, name), score in zip(members, scores, strict=True)
            if score is not None and score > now
        )

    async def _heartbeat(self) -> None:
        """Refresh this replica's users every third of the TTL; sweep expired users."""
        period = max(0.05, self.limits.presence_ttl / 3)
        while True:
            await asyncio.sleep(period)
            try:
                await self._refresh()
                await self._announce_gone()
            except (RedisError, Unavailable, OSError) as exc:
                log.warning("chat presence heartbeat failed: %s", exc)
            except Exception:
                log.exception("chat presence heartbeat failed")

    async def _refresh(self) -> None:
        users = list(self._local.items())
        if not users:
            return
        now = _ms()
        expiry = now + self._ttl_ms
        online = keys.chat_online()
        with store_guard("redis"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id, username in users:
                    where = keys.chat_where(user_id)
                    pipe.zadd(where, {self._replica: expiry})
                    pipe.zremrangebyscore(where, "-inf", now)
                    pipe.pexpire(where, self._ttl_ms)
                    pipe.zadd(online, {_online_member(user_id, username): expiry}, gt=True)
                pipe.pexpire(online, self._ttl_ms)
                await pipe.execute()

    async def _announce_gone(self) -> None:
        with store_guard("redis"):
            gone = await self._sweep(keys=[keys.chat_online()], args=[_ms(), 100])
        for member in gone:
            user_id, username = _split_member(str(member))
            if self._listener is None:
                return
            try:  # this replica alone got them from the sweep: announce every one
                await self._listener.gone(user_id, username)
            except Exception:
                log.exception("departure of %s not announced", username)

    # -- typing ----------------------------------------------------------------------

    async def typing(self, room_id: str, username: str) -> None:
        key = keys.chat_typing(room_id)
        ttl_ms = max(1, int(self.limits.typing_ttl * 1000))
        now = _ms()
        with store_guard("redis"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(key, {username: now + ttl_ms})
                pipe.zremrangebyscore(key, "-inf", now)
                pipe.pexpire(key, ttl_ms)
                await pipe.execute()

    async def typists(self, room_id: str) -> list[str]:
        with store_guard("redis"):
            names = await self._redis.zrangebyscore(keys.chat_typing(room_id), _ms(), "+inf")
        return sorted(str(n) for n in names)

    # -- routing ---------------------------------------------------------------------

    async def publish(self, room_id: str, event: Event) -> None:
        with store_guard("redis"):
            await self._redis.publish(keys.chat_room_channel(room_id), orjson.dumps(event))

    async def _route(self, posted: list[Posted]) -> None:
        """One publish per room for the whole batch, in one round trip: the frames in
        seq order, each once. Each watching replica hands them to its own sockets.
        ``Unavailable`` when Redis cannot take them: the batch is kept and sent again."""
        frames: dict[str, dict[int, Event]] = {}
        for p in posted:
            frames.setdefault(p.message.room, {})[p.message.seq] = p.message.frame()
        bodies = {
            keys.chat_room_channel(room_id): orjson.dumps([by_seq[s] for s in sorted(by_seq)])
            for room_id, by_seq in frames.items()
        }
        try:
            with store_guard("redis"):
                await self._publish_all(bodies)
        except RedisError as exc:  # refused (LOADING, READONLY...): worth another try too
            raise Unavailable(f"redis refused the publish: {exc}") from exc

    async def _publish_all(self, bodies: dict[str, bytes]) -> None:
        if isinstance(self._redis, RedisCluster):
            # A cluster client refuses PUBLISH in a pipeline (a channel has no slot):
            # one publish per room, side by side.
            await asyncio.gather(*(self._redis.publish(c, b) for c, b in bodies.items()))
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel, body in bodies.items():
                pipe.publish(channel, body)
            await pipe.execute()

    async def tell_elsewhere(self, user_id: int, event: Event) -> None:
        """Route through the registry: only replicas holding the user hear it."""
        with store_guard("redis"):
            replicas = await self._redis.zrangebyscore(keys.chat_where(user_id), _ms(), "+inf")
            body = orjson.dumps({"user": user_id, "event": event})
            for replica in map(str, replicas):
                if replica != self._replica:
                    await self._redis.publish(keys.chat_replica_channel(replica), body)

    async def watch(self, room_id: str) -> None:
        channel = keys.chat_room_channel(room_id)
        self._rooms.add(room_id)
        if channel in self._confirmed:
            return
        future = self._pending.get(channel)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._pending[channel] = future
            if self._pubsub is not None:
                with store_guard("redis"):
                    await self._pubsub.subscribe(channel)
        try:
            await asyncio.wait_for(asyncio.shield(future), SUBSCRIBE_TIMEOUT)
        except TimeoutError as exc:
            raise Unavailable("redis did not confirm the room subscription") from exc

    async def unwatch(self, room_id: str) -> None:
        channel = keys.chat_room_channel(room_id)
        self._rooms.discard(room_id)
        self._confirmed.discard(channel)
        # A watch still waiting keeps its future: the hub never overlaps the two calls
        # for one room, and a later confirmation resolves it.
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(channel)

    def _channels(self) -> list[str]:
        rooms = [keys.chat_room_channel(r) for r in sorted(self._rooms)]
        return [keys.chat_replica_channel(self._replica), *rooms]

    async def _subscriber(self) -> None:
        """Hold one pub/sub connection; after every (re)connect, subscribe to all our
        channels and have every socket catch up, since events may have been lost."""
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=False)
            try:
                self._confirmed.clear()
                self._pubsub = pubsub
                await pubsub.subscribe(*self._channels())
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("chat subscriber lost redis (%s); reconnecting", exc)
            except Exception:
                log.exception("chat subscriber failed; reconnecting")
            finally:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _listen(self, pubsub: PubSub) -> None:
        first = True
        while True:
            raw = await pubsub.get_message(timeout=1.0)
            if raw is None:
                continue
            kind, channel = raw["type"], str(raw["channel"])
            if kind == "subscribe":
                # The whole channel list is one SUBSCRIBE, so at its first confirmation
                # Redis routes every channel to us: a good moment to catch up. redis-py
                # also resubscribes by itself after a reconnect: same treatment.
                again = channel in self._confirmed
                self._confirm(channel)
                if first or again:
                    first = False
                    await self._resync()
            elif kind == "message":
                await self._dispatch(channel, raw["data"])

    def _confirm(self, channel: str) -> None:
        self._confirmed.add(channel)
        future = self._pending.pop(channel, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def _resync(self) -> None:
        if self._listener is not None:
            await self._listener.resync()

    async def _dispatch(self, channel: str, data: str) -> None:
        listener = self._listener
        if listener is None:
            return
        try:
            payload = orjson.loads(data)
            if channel == keys.chat_replica_channel(self._replica):
                await listener.user_event(int(payload["user"]), payload["event"])
                return
            room_id = channel.removeprefix(keys.chat_room_channel(""))
            # A room channel carries one event, or a committed batch of messages.
            for event in payload if isinstance(payload, list) else [payload]:
                await listener.room_event(room_id, event)
        except Exception:
            log.exception("chat event on %s could not be handled", channel)
