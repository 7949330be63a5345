"""One multiplexed Redis connection for the request path.

redis-py's asyncio pool lends a connection to one command at a time and wraps
every call in retry, health-check, timeout and pool bookkeeping: measured here at
65-100 µs of client CPU per command with 32 concurrent callers, more than the
whole request costs in the in-memory placement. ``RedisLink`` instead writes
every command issued in one event-loop turn to a single socket in one write
(automatic pipelining, as ioredis, Lettuce and GLIDE do) and matches replies to
callers in order; parsing is hiredis, Redis's own C parser. Measured the same
way: ~5 µs per command. See ``statelab bench``.

Only plain request/reply commands go through it: sessions, carts, the JWT
deny-list and rate limits. Pub/sub, blocking commands and the job queue keep
redis-py, which needs a dedicated connection for them anyway.

Failure model: a lost or refused connection fails the waiting callers with
``ConnectionError``; a reply later than ``timeout`` closes the connection and
fails them with ``TimeoutError`` (both become 503 through ``store_guard``). The
next command connects again, so a restarted Redis is picked up by itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ResponseError

Arg = str | bytes | int | float
Command = Sequence[Arg]


#: Error replies that say the server cannot serve yet, not that the command was wrong:
#: a restarted Redis answers LOADING while it replays its append-only file.
_NOT_READY = ("LOADING", "MASTERDOWN")


def _checked(reply: Any) -> Any:
    """The reply, or its error raised: ``ConnectionError`` (a 503 through
    ``store_guard``) for a server not ready, else ``ResponseError``."""
    if isinstance(reply, ResponseError):
        if str(reply).startswith(_NOT_READY):
            raise ConnectionError(f"Redis is not ready: {reply}")
        raise reply
    return reply


def pairs(flat: list[str]) -> dict[str, str]:
    """An HGETALL reply (field, value, field, value, ...) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _pack(command: Command) -> bytes:
    packed: bytes = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]  # stub: 1-tuple
    return packed


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[list[Any]]
    count: int  # replies this caller waits for (a transaction is several)
    deadline: float
    replies: list[Any] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script run by EVALSHA, loaded on first use (and after SCRIPT FLUSH)."""

    body: str
    sha: str

    @classmethod
    def of(cls, body: str) -> Script:
        return cls(body, hashlib.sha1(body.encode()).hexdigest())  # noqa: S324 (Redis's id)


class _Protocol(asyncio.Protocol):
    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._link._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._lost(self, exc)


class RedisLink:
    """A single auto-pipelined connection shared by every task of the process."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 1.0,
        timeout: float = 2.0,
    ) -> None:
        self._address = (host, port)
        self._hello: list[Command] = []
        if password is not None:
            self._hello.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._hello.append(("SELECT", db))
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._protocol: _Protocol | None = None  # ready for commands
        self._live: _Protocol | None = None  # whose reply stream ``_waiters`` follows
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._reader = self._new_reader()
        self._waiters: deque[_Waiter] = deque()
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self.commands = 0  # sent so far (each command of a batch or transaction counts)

    @classmethod
    def from_url(cls, url: str, **options: float) -> RedisLink:
        """``redis://[[user]:password@]host[:port][/db]``"""
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} (use redis://)")
        db = parts.path.strip("/")
        return cls(
            parts.hostname or "127.0.0.1",
            parts.port or 6379,
            db=int(db) if db else 0,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            **options,
        )

    @staticmethod
    def _new_reader() -> hiredis.Reader:
        return hiredis.Reader(encoding="utf-8", replyError=ResponseError)

    # -- the API -------------------------------------------------------------------

    async def call(self, *args: Arg) -> Any:
        """One command; an error reply raises ``redis.exceptions.ResponseError``."""
        (reply,) = await self._send([args], 1)
        return _checked(reply)

    async def batch(self, commands: Sequence[Command], *, transaction: bool = False) -> list[Any]:
        """Several commands in one round trip; with ``transaction`` inside MULTI/EXEC,
        so no other client's command runs between them. Raises the first error reply."""
        if transaction:
            replies = await self._send([("MULTI",), *commands, ("EXEC",)], len(commands) + 2)
            for reply in replies[:-1]:  # MULTI's OK, QUEUED each (or why not)
                _checked(reply)
            results = _checked(replies[-1])  # EXECABORT raises here
            if results is None:  # a WATCHed key changed
                raise ResponseError("transaction aborted")
        else:
            results = await self._send(commands, len(commands))
        return [_checked(result) for result in results]

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """EVALSHA, falling back to EVAL (which caches the script) when Redis lacks it."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call("EVAL", script.body, len(keys), *keys, *args)

    async def aclose(self) -> None:
        if self._live is not None:
            self._drop(self._live, ConnectionError("the Redis link was closed"))
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    # -- the connection --------------------------------------------------------

    async def _send(self, commands: Sequence[Command], count: int) -> list[Any]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._reset(loop)  # a new event loop cannot use the old one's socket
        if self._protocol is None:
            await self._connect()
        waiter = _Waiter(loop.create_future(), count, time.monotonic() + self._timeout)
        self._outgoing.extend(_pack(c) for c in commands)
        self.commands += len(commands)
        self._waiters.append(waiter)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout / 2, self._watch)
        return await waiter.future

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._protocol = self._live = None
        self._connecting = self._watchdog = None
        self._waiters, self._outgoing, self._flush_scheduled = deque(), [], False

    def _flush(self) -> None:
        self._flush_scheduled = False
        data, self._outgoing = b"".join(self._outgoing), []
        if data and self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.write(data)

    async def _connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            self._protocol = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), *self._address),
                self._connect_timeout,
            )
        except TimeoutError as exc:
            raise TimeoutError(f"connecting to Redis at {self._address} timed out") from exc
        except OSError as exc:  # refused, unreachable, ...
            raise ConnectionError(f"cannot connect to Redis at {self._address}: {exc}") from exc
        assert protocol.transport is not None
        self._live, self._reader = protocol, self._new_reader()  # a fresh reply stream
        if not self._hello:
            return protocol
        deadline = time.monotonic() + self._connect_timeout
        waiter = _Waiter(loop.create_future(), len(self._hello), deadline)
        self._waiters.append(waiter)
        protocol.transport.write(b"".join(_pack(c) for c in self._hello))
        try:
            replies = await asyncio.wait_for(waiter.future, self._connect_timeout)
            for reply in replies:
                if isinstance(reply, ResponseError):
                    raise ConnectionError(f"Redis refused the connection setup: {reply}")
        except BaseException:
            self._drop(protocol, None)
            raise
        return protocol

    def _received(self, protocol: _Protocol, data: bytes) -> None:
        if protocol is not self._live:
            return  # a connection already given up on
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            waiter = self._waiters[0]
            waiter.replies.append(reply)
            if len(waiter.replies) == waiter.count:
                self._waiters.popleft()
                if not waiter.future.done():  # a cancelled caller's replies are dropped
                    waiter.future.set_result(waiter.replies)

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is self._live:
            self._drop(protocol, ConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def _drop(self, protocol: _Protocol, error: Exception | None) -> None:
        """Give up on a connection: fail everything waiting on it, close it."""
        if protocol is self._live:
            self._live = None
        if protocol is self._protocol:
            self._protocol = None
        waiters, self._waiters = self._waiters, deque()
        self._outgoing.clear()
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(error or ConnectionError("Redis connection closed"))
        if protocol.transport is not None and not protocol.transport.is_closing():
            protocol.transport.abort()

    def _watch(self) -> None:
        """A reply overdue means the connection is stuck: drop it, fail its callers."""
        self._watchdog = None
        if not self._waiters:
            return
        if self._waiters[0].deadline < time.monotonic() and self._live is not None:
            self._drop(self._live, TimeoutError(f"Redis did not answer within {self._timeout} s"))
        if self._waiters:
            assert self._loop is not None
            self._watchdog = self._loop.call_later(self._timeout / 2, self._watch)
