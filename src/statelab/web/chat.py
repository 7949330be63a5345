"""Live chat: the ``GET /ws/chat`` WebSocket, the ``/api/chat`` routes and the hub
that holds this replica's sockets.

JSON text frames, each with a ``type``. Client to server: ``join``, ``leave``,
``send`` (``room``, ``client_msg_id``, ``text``), ``typing``, ``read`` (``room``,
``seq``), ``resume`` (``rooms``: room id -> last seen seq). Server to client:
``message``, ``ack``, ``presence``, ``typing``, ``unread``, ``error`` (``code``,
``detail``). A bad frame gets an ``error`` frame; the socket stays open.

Delivery. Every socket has, per room it joined or resumed, a cursor: the last seq it
was sent. One writer task per socket owns the cursors and sends everything, so a
live message older than the cursor is dropped (no duplicates), one right after it is
sent, and one further ahead first pulls the missing range from history (no gaps).
``resume`` sets the cursor to what the client last saw and pulls the rest. Live
events reach the writer through a bounded queue: a socket too slow to drain it is
closed with 1013 and resumes on reconnect, so a slow client never stalls a room.

Sending. A ``send`` does not hold up the frames behind it: several sends of one
socket wait for their commit together (the store commits messages in groups, in the
order they came), and each is acknowledged once stored. How many is bounded by the
send queue: each send brings an ack and, on a socket that follows the room, its own
message, and the answers of a burst must fit with room to spare. Any other frame
waits until the sends before it are answered, so answers keep the order of frames.

A socket lives no longer than its session. Logout (one session) and logout-all (every
session of the user) close the sockets on every replica through the chat store's
per-replica routing. Since such an event can be missed (Redis unreachable for a
moment, a session revoked some other way), each socket also closes at its session's
expiry and re-checks the session every ``chat_session_check_seconds``. A re-check
counts as use, as a request does: an open socket keeps its session from idling out,
up to its absolute lifetime. Each of these closes with 4401. A user holds at most
``chat_sockets_per_user`` sockets on one replica; one more is closed with 1008 and
says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, FastAPI, Query, WebSocket
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from statelab.config import Settings
from statelab.domain.errors import (
    Forbidden,
    InvalidInput,
    LimitExceeded,
    MalformedRequest,
    NotAuthenticated,
    NotFound,
    RateLimited,
    StatelabError,
    Unavailable,
)
from statelab.state import Stores
from statelab.state.chat import ChatStore, Event
from statelab.state.session import Session
from statelab.web.auth import public_id
from statelab.web.deps import StoresDep, UserDep, resolve_caller
from statelab.web.params import KeyPath, NulFree, Seq, SeqQuery, Text
from statelab.web.problems import problem, responses, status_of

log = logging.getLogger(__name__)
router = APIRouter(tags=["chat"])

#: Messages read from history per query while a socket catches up.
CATCH_UP_PAGE = 200
#: Upper bound on pages per catch-up (2 million messages): every loop is bounded.
CATCH_UP_MAX_PAGES = 10_000
#: How long a server-side close may take before the socket is given up.
CLOSE_TIMEOUT = 5.0
#: Most sends one socket may have waiting for their commit (fewer with a short send
#: queue); the next frame waits for one to be answered.
SENDS_IN_FLIGHT = 32
#: Close codes: 4401 as for NotAuthenticated, 1013 "try again later" for a socket
#: that could not keep up or whose catch-up failed, 1012 "service restart", 1008
#: "policy violation" for a socket over the per-user limit.
CLOSE_LOGGED_OUT, CLOSE_TOO_SLOW, CLOSE_RESTART, CLOSE_POLICY = 4401, 1013, 1012, 1008

#: How a socket's session is looked up again: from the credential it was opened with.
SessionCheck = Callable[[WebSocket], Awaitable[Session | None]]


# ------------------------------------------------------------------------ frames in

RoomId = Annotated[str, StringConstraints(min_length=1, max_length=32), NulFree()]
ClientMsgId = Annotated[str, StringConstraints(min_length=1, max_length=64), NulFree()]


class _Frame(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)


class JoinFrame(_Frame):
    type: Literal["join"]
    room: RoomId


class LeaveFrame(_Frame):
    type: Literal["leave"]
    room: RoomId


class SendFrame(_Frame):
    type: Literal["send"]
    room: RoomId
    client_msg_id: ClientMsgId
    text: Text


class TypingFrame(_Frame):
    type: Literal["typing"]
    room: RoomId


class ReadFrame(_Frame):
    type: Literal["read"]
    room: RoomId
    seq: Seq


class ResumeFrame(_Frame):
    type: Literal["resume"]
    rooms: dict[RoomId, Seq]


ClientFrame = Annotated[
    JoinFrame | LeaveFrame | SendFrame | TypingFrame | ReadFrame | ResumeFrame,
    Field(discriminator="type"),
]
_client_frames: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)


def error_frame(code: str, detail: str) -> Event:
    return {"type": "error", "code": code, "detail": detail}


def _code(exc: StatelabError) -> str:
    """``LimitExceeded`` -> ``limit_exceeded``: the error's class, for programs."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def _bad_frame(exc: ValidationError) -> Event:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "frame"
    return error_frame("bad_frame", f"{where}: {first['msg']}")


def _error_of(exc: ValidationError | StatelabError) -> Event:
    if isinstance(exc, ValidationError):
        return _bad_frame(exc)
    return error_frame(_code(exc), exc.detail)


# ----------------------------------------------------------------- the writer's work


@dataclass(frozen=True, slots=True)
class _Live:
    """A live message for the cursor logic, serialized once for every socket."""

    room: str
    seq: int
    text: str


@dataclass(frozen=True, slots=True)
class _Start:
    """Start a cursor at ``after`` and send what came since. A join passes the room's
    newest message when the join was read (``keep``: a repeated join keeps the cursor);
    a resume passes what the client last saw."""

    room: str
    after: int
    keep: bool = False


@dataclass(frozen=True, slots=True)
class _Stop:
    room: str


@dataclass(frozen=True, slots=True)
class _CatchUp:
    room: str


_Item = Event | _Live | _Start | _Stop | _CatchUp


class _Bucket:
    """Token bucket: ``rate`` frames per second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Connection:
    """One accepted socket: its user, rooms, cursors, send queue and writer task."""

    def __init__(self, ws: WebSocket, session: Session, store: ChatStore, settings: Settings):
        self.ws = ws
        self.user_id = session.user_id
        self.username = session.username
        self.session_id = public_id(session.sid)  # what logout events name
        self.expires_at = session.expires_at
        self.store = store
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(settings.chat_send_queue_frames)
        self.bucket = _Bucket(settings.chat_frames_per_second, settings.chat_frame_burst)
        self.rooms: set[str] = set()  # joined or resumed on this socket
        self.cursors: dict[str, int] = {}  # owned by the writer task
        self.presence: dict[str, bool] = {}  # what this socket was last told
        self.closing = False
        self.writer: asyncio.Task[None] | None = None
        self.closer: asyncio.Task[None] | None = None
        self.sending: set[asyncio.Task[None]] = set()  # sends waiting for their commit
        # Two frames of answer per send; half the queue stays free for the rest.
        self.max_sending = max(1, min(SENDS_IN_FLIGHT, settings.chat_send_queue_frames // 4))

    async def make_room(self) -> None:
        """Wait until another send may start (see the module docstring)."""
        while len(self.sending) >= self.max_sending:
            await asyncio.wait(self.sending, return_when=asyncio.FIRST_COMPLETED)

    def start_send(self, send: Coroutine[Any, Any, None]) -> None:
        """Run a send beside the earlier ones still waiting for their commit. Tasks
        start in the order they are made, and each hands its message to the store
        before it first waits: the store sees a socket's messages in order."""
        task = asyncio.create_task(send)
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def settle(self) -> None:
        """Wait until every send started on this socket has been answered."""
        if self.sending:
            await asyncio.wait(self.sending)

    def abandon(self) -> None:
        """The socket is gone: stop waiting for its sends (they may still be stored)."""
        for task in self.sending:
            task.cancel()

    def offer(self, item: _Item) -> None:
        """Queue without waiting; a full queue means the client cannot keep up."""
        if self.closing:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            log.info("chat socket of user %s too slow; closing it", self.user_id)
            self.close(CLOSE_TOO_SLOW, "too slow: reconnect and resume")

    def close(self, code: int, reason: str) -> None:
        """Close from the server side, once; the reader then sees the disconnect."""
        if self.closing:
            return
        self.closing = True
        if self.writer is not None:
            self.writer.cancel()
        self.closer = asyncio.create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        if self.writer is not None:
            with contextlib.suppress(BaseException):
                await self.writer
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, reason), CLOSE_TIMEOUT)

    # -- the writer ------------------------------------------------------------------

    async def write_loop(self) -> None:
        """Send queued frames in order until the socket goes away."""
        try:
            while True:
                await self._write(await self.queue.get())
        except StatelabError as exc:
            log.warning("chat socket of user %s cannot catch up: %s", self.user_id, exc)
            self.close(CLOSE_TOO_SLOW, "history unavailable: reconnect and resume")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away mid-send
            log.debug("chat writer of user %s ended: %r", self.user_id, exc)

    async def _write(self, item: _Item) -> None:
        if isinstance(item, dict):
            await self._send(item)
        elif isinstance(item, _Live):
            await self._live(item)
        elif isinstance(item, _Start):
            await self._start(item)
        elif isinstance(item, _Stop):
            self.cursors.pop(item.room, None)
        elif item.room in self.cursors:
            await self._catch_up(item.room, None)

    async def _send(self, frame: Event) -> None:
        await self.ws.send_text(orjson.dumps(frame).decode())

    async def _live(self, item: _Live) -> None:
        cursor = self.cursors.get(item.room)
        if cursor is None or item.seq <= cursor:
            return  # not (yet) following the room, or already sent
        if item.seq > cursor + 1:
            await self._catch_up(item.room, item.seq - 1)
        await self.ws.send_text(item.text)
        self.cursors[item.room] = item.seq

    async def _start(self, item: _Start) -> None:
        if item.keep:
            if item.room in self.cursors:
                return  # a repeated join: what is queued behind the cursor is unsent
            self.cursors[item.room] = item.after
        else:
            self.cursors[item.room] = min(item.after, await self.store.last_seq(item.room))
        # A message stored between the join and now (the socket's own first one,
        # say) has its live frame queued behind this item: catch-up sends it first.
        await self._catch_up(item.room, None)

    async def _catch_up(self, room: str, upto: int | None) -> None:
        """Send history after the cursor (up to ``upto``, or all there is)."""
        for _ in range(CATCH_UP_MAX_PAGES):
            batch = await self.store.history(room, self.cursors[room], CATCH_UP_PAGE)
            for message in batch:
                if upto is not None and message.seq > upto:
                    return
                await self._send(message.frame())
                self.cursors[room] = message.seq
            if len(batch) < CATCH_UP_PAGE:
                return


# ------------------------------------------------------------------------------ hub

Handler = Callable[["Hub", Connection, Any], Awaitable[None]]


class Hub:
    """This replica's sockets, by user and by room, and the chat protocol.

    It is the store's ``ChatListener``: live events arrive here and are put on the
    queues of the sockets that follow the room.
    """

    def __init__(self, store: ChatStore, settings: Settings, check: SessionCheck) -> None:
        self.store = store
        self.settings = settings
        self._check = check
        self._by_user: dict[int, set[Connection]] = {}
        self._by_room: dict[str, set[Connection]] = {}
        self._keeping_up: asyncio.Task[None] | None = None
        self._watched: set[str] = set()
        self._room_locks: dict[str, asyncio.Lock] = {}
        self._presence_locks: dict[int, asyncio.Lock] = {}
        self._entered: set[int] = set()

    async def start(self) -> None:
        await self.store.start(self)
        self._keeping_up = asyncio.create_task(self._keep_up())

    async def stop(self) -> None:
        """Close what is still open with 1012 (uvicorn already did on its shutdown)
        and stop the store's background tasks."""
        for conns in list(self._by_user.values()):
            for conn in list(conns):
                conn.close(CLOSE_RESTART, "server shutting down")
        closers = [c.closer for cs in self._by_user.values() for c in cs if c.closer]
        if closers:
            await asyncio.wait(closers, timeout=CLOSE_TIMEOUT)
        if self._keeping_up is not None:
            self._keeping_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeping_up
        await self.store.stop()

    async def _keep_up(self) -> None:
        """Anti-entropy for live delivery: every ``chat_catch_up_seconds`` compare each
        socket's cursor with its rooms' newest message (one query). A socket still short
        of what was newest a round earlier missed a live frame (a publish lost in a
        Redis failover, say) and pulls the rest from history; one merely busy writing a
        burst is left alone until the next round."""
        every = self.settings.chat_catch_up_seconds
        seen: dict[str, int] = {}
        while True:
            await asyncio.sleep(every)
            rooms = sorted(room for room, conns in self._by_room.items() if conns)
            if not rooms:
                continue
            try:
                newest = await self.store.last_seqs(rooms)
            except StatelabError:
                continue  # the store is down: the next round tries again
            for room, was in seen.items():
                for conn in list(self._by_room.get(room, ())):
                    cursor = conn.cursors.get(room)
                    if cursor is not None and cursor < was:
                        conn.offer(_CatchUp(room))
            seen = newest

    # -- one socket ------------------------------------------------------------------

    async def serve(self, conn: Connection) -> None:
        """Run an accepted socket until it closes (at once if the user has too many)."""
        mine = self._by_user.setdefault(conn.user_id, set())
        cap = self.settings.chat_sockets_per_user
        if len(mine) >= cap:
            reason = f"too many chat sockets: at most {cap} per user on this replica"
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(CLOSE_POLICY, reason), CLOSE_TIMEOUT)
            return
        mine.add(conn)
        conn.writer = asyncio.create_task(conn.write_loop())
        guard = asyncio.create_task(self._guard(conn))
        try:
            try:
                await self._presence(conn.user_id, conn.username)
            except StatelabError as exc:  # the heartbeat registers the user later
                log.warning("presence of %s not recorded: %s", conn.username, exc)
            await self._read_loop(conn)
        finally:
            conn.closing = True
            conn.writer.cancel()
            conn.abandon()
            guard.cancel()
            await self._forget(conn)

    async def _guard(self, conn: Connection) -> None:
        """Close the socket when its session ends: at its expiry, or at the first
        re-check that finds it gone. A store that cannot answer keeps the socket
        open until the next re-check (the expiry still holds)."""
        every = self.settings.chat_session_check_seconds
        while not conn.closing:
            await asyncio.sleep(max(0.0, min(every, conn.expires_at - time.time())))
            if time.time() >= conn.expires_at:
                break
            try:
                current = await self._check(conn.ws)
            except StatelabError as exc:
                log.warning("session of chat user %s not re-checked: %s", conn.user_id, exc)
                continue
            except Exception:
                log.exception("session of chat user %s not re-checked", conn.user_id)
                continue
            if current is None or public_id(current.sid) != conn.session_id:
                break
        # The timer may fire a moment before the wall clock reaches the expiry.
        expired = time.time() >= conn.expires_at - 1
        conn.close(CLOSE_LOGGED_OUT, f"session {'expired' if expired else 'ended'}: log in again")

    async def _read_loop(self, conn: Connection) -> None:
        while True:
            message = await conn.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if not conn.closing:
                await self._on_frame(conn, message.get("text"))

    async def _forget(self, conn: Connection) -> None:
        conns = self._by_user.get(conn.user_id, set())
        conns.discard(conn)
        if not conns:
            self._by_user.pop(conn.user_id, None)
        for room in list(conn.rooms):
            await self._unsubscribe(conn, room)
        with contextlib.suppress(StatelabError):
            await self._presence(conn.user_id, conn.username)

    async def _on_frame(self, conn: Connection, text: str | None) -> None:
        """Handle one frame. A ``send`` runs beside the sends before it that still wait
        for their commit, so they can share one; any other frame (or error) waits until
        those are answered. Answers thus leave in the order of the frames."""
        try:
            if not conn.bucket.take():
                raise RateLimited("too many frames on this socket; slow down", 1)
            frame = self._parse(text)
        except (ValidationError, StatelabError) as exc:
            await conn.settle()
            conn.offer(_error_of(exc))
            return
        handler = self._handlers[frame.type]
        if isinstance(frame, SendFrame):
            await conn.make_room()
            conn.start_send(self._answer(conn, handler(self, conn, frame)))
        else:
            await conn.settle()
            await self._answer(conn, handler(self, conn, frame))

    @staticmethod
    async def _answer(conn: Connection, work: Awaitable[None]) -> None:
        """Run a frame's work; a failure becomes an ``error`` frame on the socket."""
        try:
            await work
        except (ValidationError, StatelabError) as exc:
            conn.offer(_error_of(exc))
        except Exception:
            log.exception("chat frame of user %s failed", conn.user_id)
            conn.offer(error_frame("internal", "the server failed; the error was logged"))

    def _parse(self, text: str | None) -> ClientFrame:
        if text is None:
            raise MalformedRequest("send JSON text frames, not binary ones")
        # uvicorn refuses longer frames already (1009); other servers may not.
        limit = self.settings.chat_max_frame_bytes
        if len(text) > limit:
            raise LimitExceeded(f"frame is {len(text)} characters; at most {limit}")
        return _client_frames.validate_json(text)

    # -- frames ----------------------------------------------------------------------

    async def _join(self, conn: Connection, frame: JoinFrame) -> None:
        room = await self.store.join(frame.room, conn.user_id)
        await self._subscribe(conn, room.id, None)
        await self._greet(conn, [room.id])
        # The members already there learn that the newcomer is online.
        online = {"type": "presence", "user": conn.username, "online": True}
        await self.store.publish(room.id, online)

    async def _leave(self, conn: Connection, frame: LeaveFrame) -> None:
        await self.store.leave(frame.room, conn.user_id)
        await self.user_event(conn.user_id, {"type": "leave", "room": frame.room})
        with contextlib.suppress(StatelabError):
            await self.store.tell_elsewhere(conn.user_id, {"type": "leave", "room": frame.room})

    async def _send_message(self, conn: Connection, frame: SendFrame) -> None:
        limit = self.settings.max_message_chars
        if not frame.text.strip():
            raise InvalidInput("text must not be empty")
        if len(frame.text) > limit:
            raise LimitExceeded(f"text is {len(frame.text)} characters; at most {limit}")
        # The store routes it too (a resend again); cursors drop the duplicates.
        posted = await self.store.post(
            frame.room, conn.user_id, conn.username, frame.client_msg_id, frame.text
        )
        message = posted.message
        ack = {"client_msg_id": message.client_msg_id, "room": message.room, "seq": message.seq}
        conn.offer({"type": "ack", **ack})

    async def _typing(self, conn: Connection, frame: TypingFrame) -> None:
        if frame.room not in conn.rooms:
            raise NotFound(f"join room {frame.room!r} on this socket first")
        await self.store.typing(frame.room, conn.username)
        await self.store.publish(
            frame.room, {"type": "typing", "room": frame.room, "user": conn.username}
        )

    async def _read(self, conn: Connection, frame: ReadFrame) -> None:
        count = await self.store.mark_read(frame.room, conn.user_id, frame.seq)
        unread = {"type": "unread", "room": frame.room, "count": count}
        await self.user_event(conn.user_id, unread)
        with contextlib.suppress(StatelabError):
            await self.store.tell_elsewhere(conn.user_id, unread)

    async def _resume(self, conn: Connection, frame: ResumeFrame) -> None:
        limit = self.settings.chat_rooms_per_user
        if len(frame.rooms) > limit:
            raise LimitExceeded(f"resume at most {limit} rooms")
        resumed = []
        for room_id, last_seen in frame.rooms.items():
            try:
                await self.store.room(room_id, conn.user_id)
            except NotFound as exc:
                conn.offer(error_frame(_code(exc), exc.detail))
                continue
            await self._subscribe(conn, room_id, last_seen)
            resumed.append(room_id)
        await self._greet(conn, resumed)

    _handlers: dict[str, Handler] = {
        "join": _join,
        "leave": _leave,
        "send": _send_message,
        "typing": _typing,
        "read": _read,
        "resume": _resume,
    }

    async def _greet(self, conn: Connection, rooms: list[str]) -> None:
        """What a socket needs on entering rooms: unread counts, who is online and
        who is typing."""
        counts = await self.store.unread(conn.user_id)
        for room in rooms:
            conn.offer({"type": "unread", "room": room, "count": counts.get(room, 0)})
            for user in await self.store.online_in(room):
                self._tell_presence(conn, user, True)
            for user in await self.store.typists(room):
                if user != conn.username:
                    conn.offer({"type": "typing", "room": room, "user": user})

    @staticmethod
    def _tell_presence(conn: Connection, user: str, online: bool) -> None:
        if conn.presence.get(user) != online:
            conn.presence[user] = online
            conn.offer({"type": "presence", "user": user, "online": online})

    # -- rooms -----------------------------------------------------------------------

    def _room_lock(self, room: str) -> asyncio.Lock:
        return self._room_locks.setdefault(room, asyncio.Lock())

    async def _subscribe(self, conn: Connection, room: str, after: int | None) -> None:
        """Follow the room on this socket. The replica subscribes (and Redis confirms)
        before anyone reads where the room is, so nothing falls in between. A join
        reads it here, before the socket's next frame: every message stored after
        the join was read — the socket's own next send included — is delivered."""
        if room not in conn.rooms:
            async with self._room_lock(room):
                if room not in self._watched:
                    await self.store.watch(room)
                    self._watched.add(room)
                conn.rooms.add(room)
                self._by_room.setdefault(room, set()).add(conn)
        if after is None:
            conn.offer(_Start(room, await self.store.last_seq(room), keep=True))
        else:
            conn.offer(_Start(room, after))

    async def _unsubscribe(self, conn: Connection, room: str) -> None:
        conn.rooms.discard(room)
        conn.offer(_Stop(room))
        followers = self._by_room.get(room, set())
        followers.discard(conn)
        if followers:
            return
        lock = self._room_lock(room)
        async with lock:
            if not self._by_room.get(room) and room in self._watched:
                self._by_room.pop(room, None)
                self._watched.discard(room)
                with contextlib.suppress(StatelabError):
                    await self.store.unwatch(room)
        if not lock.locked() and room not in self._watched:
            self._room_locks.pop(room, None)

    # -- presence --------------------------------------------------------------------

    async def _presence(self, user_id: int, username: str) -> None:
        """Bring the store's view of this replica's users in line with the sockets
        here, one user at a time, and announce a change of online status."""
        lock = self._presence_locks.setdefault(user_id, asyncio.Lock())
        changed = False
        async with lock:
            here = user_id in self._by_user
            if here and user_id not in self._entered:
                changed = await self.store.enter(user_id, username)
                self._entered.add(user_id)
            elif not here and user_id in self._entered:
                self._entered.discard(user_id)
                changed = await self.store.exit(user_id, username)
        if not lock.locked() and user_id not in self._entered:
            self._presence_locks.pop(user_id, None)
        if changed:
            await self._announce(user_id, username, here)

    async def _announce(self, user_id: int, username: str, online: bool) -> None:
        event = {"type": "presence", "user": username, "online": online}
        try:
            for room in await self.store.rooms_of(user_id):
                await self.store.publish(room.id, event)
        except StatelabError as exc:
            log.warning("presence of %s not announced: %s", username, exc)

    # -- ChatListener ----------------------------------------------------------------

    async def room_event(self, room_id: str, event: Event) -> None:
        followers = list(self._by_room.get(room_id, ()))
        kind = event.get("type")
        if kind == "message":
            live = _Live(room_id, int(event["seq"]), orjson.dumps(event).decode())
            for conn in followers:
                conn.offer(live)
        elif kind == "typing":
            for conn in followers:
                if conn.username != event.get("user"):
                    conn.offer(event)
        elif kind == "presence":
            for conn in followers:
                self._tell_presence(conn, str(event["user"]), bool(event["online"]))

    async def user_event(self, user_id: int, event: Event) -> None:
        kind = event.get("type")
        for conn in list(self._by_user.get(user_id, ())):
            if kind == "close":
                self._close_if_ended(conn, event.get("session"))
            elif kind == "leave":
                await self._unsubscribe(conn, str(event["room"]))
            elif kind == "unread":
                conn.offer(event)

    async def resync(self) -> None:
        for conns in list(self._by_user.values()):
            for conn in list(conns):
                for room in list(conn.rooms):
                    conn.offer(_CatchUp(room))

    async def gone(self, user_id: int, username: str) -> None:
        if user_id in self._by_user:
            return  # still here: our heartbeat puts them back
        await self._announce(user_id, username, False)

    @staticmethod
    def _close_if_ended(conn: Connection, session_id: Any) -> None:
        """A ``close`` event names one session (logout), or none: every session."""
        if session_id is None:
            conn.close(CLOSE_LOGGED_OUT, "logged out on every device")
        elif session_id == conn.session_id:
            conn.close(CLOSE_LOGGED_OUT, "logged out")

    async def close_user(self, user_id: Any) -> None:
        """The ``on_logout_all`` hook: close the user's sockets on every replica."""
        await self._close_everywhere(int(user_id), {"type": "close"})

    async def close_session(self, session: Session) -> None:
        """The ``on_logout`` hook: close one session's sockets on every replica."""
        event = {"type": "close", "session": public_id(session.sid)}
        await self._close_everywhere(session.user_id, event)

    async def _close_everywhere(self, user_id: int, event: Event) -> None:
        await self.user_event(user_id, event)
        try:
            await self.store.tell_elsewhere(user_id, event)
        except StatelabError as exc:  # their re-check closes them within a minute
            log.warning("sockets of user %s on other replicas not closed: %s", user_id, exc)


@asynccontextmanager
async def running(app: FastAPI, stores: Stores) -> AsyncIterator[Hub]:
    """The chat hub for the app's lifespan: started after the stores open, stopped
    (sockets closed, subscriber and heartbeat ended) before they close."""
    hub = Hub(stores.chat, stores.settings, partial(_session_of, stores=stores))
    await hub.start()
    app.state.chat_hub = hub
    app.state.on_logout_all.append(hub.close_user)
    app.state.on_logout.append(hub.close_session)
    try:
        yield hub
    finally:
        with contextlib.suppress(ValueError):
            app.state.on_logout_all.remove(hub.close_user)
        with contextlib.suppress(ValueError):
            app.state.on_logout.remove(hub.close_session)
        await hub.stop()


async def _session_of(ws: WebSocket, stores: Stores) -> Session | None:
    """The session behind the credential a socket was opened with, if still valid."""
    return (await resolve_caller(ws, stores)).session


# ------------------------------------------------------------------------ WebSocket


def same_origin(ws: WebSocket) -> bool:
    """A browser always sends Origin: it must name the host the socket was opened on.
    Clients that are not browsers send none and carry no ambient cookies to abuse."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    host = ws.headers.get("host", "")
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.lower()


async def _admit(ws: WebSocket) -> Session | StatelabError:
    if not same_origin(ws):
        return Forbidden("cross-origin WebSocket refused: Origin must match Host")
    if ws.app.state.draining:
        return Unavailable("this replica is shutting down; connect to another one")
    try:
        caller = await resolve_caller(ws, ws.app.state.stores)
    except Unavailable as exc:
        return exc
    if caller.session is None:
        return NotAuthenticated("log in first: no valid session cookie or bearer token")
    return caller.session


async def _refuse(ws: WebSocket, exc: StatelabError) -> None:
    """Refuse the handshake with a problem+json answer where the server can send
    one (uvicorn can), or a close code."""
    status, close_code = status_of(exc)
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        headers = {"Retry-After": "1"} if isinstance(exc, Unavailable) else None
        await ws.send_denial_response(problem(status, exc.title, exc.detail, headers))
    else:
        await ws.close(close_code, exc.detail[:120])


@router.websocket("/ws/chat")
async def chat_socket(websocket: WebSocket) -> None:
    """The chat WebSocket (protocol in this module's docstring)."""
    admitted = await _admit(websocket)
    if isinstance(admitted, StatelabError):
        await _refuse(websocket, admitted)
        return
    hub: Hub = websocket.app.state.chat_hub
    await websocket.accept()
    await hub.serve(Connection(websocket, admitted, hub.store, hub.settings))


# ----------------------------------------------------------------------------- REST


class NewRoom(BaseModel):
    name: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80), NulFree()
    ]


class RoomOut(BaseModel):
    id: str
    name: str


class RoomInfo(BaseModel):
    id: str
    name: str
    last_seq: int
    unread: int


class Rooms(BaseModel):
    rooms: list[RoomInfo]


class MessageOut(BaseModel):
    room: str
    seq: int
    sender: str
    text: str
    client_msg_id: str
    sent_at: str


class Messages(BaseModel):
    messages: list[MessageOut]


class Unread(BaseModel):
    rooms: dict[str, int]
    total: int


class Online(BaseModel):
    users: list[str]


@router.get("/api/chat/rooms")
async def list_rooms(stores: StoresDep, user: UserDep) -> Rooms:
    """The rooms the caller is a member of, with unread counts."""
    counts = await stores.chat.unread(user.user_id)
    rooms = await stores.chat.rooms_of(user.user_id)
    return Rooms(
        rooms=[
            RoomInfo(id=r.id, name=r.name, last_seq=r.last_seq, unread=counts.get(r.id, 0))
            for r in rooms
        ]
    )


@router.post("/api/chat/rooms", status_code=201)
async def create_room(body: NewRoom, stores: StoresDep, user: UserDep) -> RoomOut:
    """A new room; the creator is its first member. Others join it by id."""
    room = await stores.chat.create_room(body.name, user.user_id)
    return RoomOut(id=room.id, name=room.name)


@router.post("/api/chat/rooms/{room_id}/join", responses=responses(404))
async def join_room(room_id: KeyPath, stores: StoresDep, user: UserDep) -> RoomOut:
    """Become a member of a room by its id (the ``join`` frame does the same)."""
    room = await stores.chat.join(room_id, user.user_id)
    return RoomOut(id=room.id, name=room.name)


@router.get("/api/chat/rooms/{room_id}/messages", responses=responses(404))
async def room_messages(
    room_id: KeyPath,
    stores: StoresDep,
    user: UserDep,
    after: SeqQuery = 0,
    limit: Annotated[int, Query(ge=1, le=CATCH_UP_PAGE)] = 50,
) -> Messages:
    """A room's history after ``after``, oldest first (members only)."""
    await stores.chat.room(room_id, user.user_id)
    history = await stores.chat.history(room_id, after, limit)
    return Messages(messages=[MessageOut.model_validate(m.frame()) for m in history])


@router.get("/api/chat/unread")
async def unread(stores: StoresDep, user: UserDep) -> Unread:
    counts = await stores.chat.unread(user.user_id)
    return Unread(rooms=counts, total=sum(counts.values()))


@router.get("/api/chat/online")
async def online(stores: StoresDep, user: UserDep) -> Online:
    """Who has a chat socket open on any replica (this replica only with ``memory``)."""
    return Online(users=await stores.chat.online(200))
