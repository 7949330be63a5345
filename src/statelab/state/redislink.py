"""One multiplexed Redis connection per server for the request path.

redis-py's asyncio pool lends a connection to one command at a time and wraps
every call in retry, health-check, timeout and pool bookkeeping. ``RedisLink``
instead writes every command issued in one event-loop turn to a single socket in
one write (automatic pipelining, as ioredis, Lettuce and GLIDE do) and matches
replies to callers in order; parsing is hiredis, Redis's own C parser. Client CPU
per command with 32 concurrent callers (``tests/redis/measure.py``, HGETALL of a
session; one server / Sentinel / Cluster): RedisLink 5.5 / 5.5 / 7 µs, redis-py
53-56 µs, coredis 72-89 µs, valkey-glide 31 / - / 37 µs (GLIDE has no Sentinel
support). A request of the in-memory placement costs less than one redis-py
command, so the request path keeps its own link, with the failover and cluster
handling below tested against real sentinels and clusters (``tests/redis``).

It reaches Redis in the three forms of ``statelab.redisurl``:

- one server (``redis://``);
- a primary found through Sentinel (``redis+sentinel://``): before each connect the
  sentinels are asked where the primary is, and the server must say ``ROLE master``
  before any command is sent. A lost connection, or a ``READONLY`` reply from a
  primary demoted meanwhile, drops the connection: the next command asks again, so
  the link follows a failover by itself;
- a Redis Cluster (``redis+cluster://``): one connection per primary, the slot map
  from ``CLUSTER SLOTS``, each command sent to the primary of its key's slot.
  ``MOVED`` updates the map and resends; ``ASK`` resends once to the importing node
  after ``ASKING``; ``TRYAGAIN`` (a multi-key command during a migration) waits and
  resends. A primary that cannot be reached marks the map stale: it is read again in
  the background (at most every ``REFRESH_INTERVAL``), so the commands for other
  primaries' slots neither wait nor fail, and the replica promoted in its place is
  found within a read of the map. Keyless commands (the readiness PING) go to the
  first primary that answers.

Only plain request/reply commands go through it: sessions, carts, the JWT
deny-list and rate limits. Pub/sub, blocking commands and the job queue keep
redis-py (``statelab.state.redisclient``), which needs a dedicated connection for
them anyway. In a cluster every transaction and script touches one hash slot:
``statelab.state.keys`` tags the keys that go together.

Failure model: a lost or refused connection fails the waiting callers with
``ConnectionError``; a reply later than ``timeout`` closes the connection and
fails them with ``TimeoutError``; a server that cannot serve yet (``LOADING``,
``MASTERDOWN``, ``CLUSTERDOWN``, ``READONLY``) is a ``ConnectionError`` too. All
become 503 through ``store_guard``. The next command connects again, so a
restarted or promoted Redis is picked up by itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from statelab.redisurl import RedisAddress, parse_redis_url

log = logging.getLogger(__name__)

Arg = str | bytes | int | float
Command = Sequence[Arg]
Address = tuple[str, int]


#: Error replies that say the server cannot serve yet, not that the command was wrong:
#: a restarted Redis answers LOADING while it replays its append-only file; a replica
#: whose primary is gone MASTERDOWN; a demoted primary READONLY; a cluster with a
#: slot nobody serves CLUSTERDOWN.
_NOT_READY = ("LOADING", "MASTERDOWN", "READONLY", "CLUSTERDOWN")

#: Redirections a cluster command may follow before the link gives up on it.
MAX_REDIRECTS = 5
#: How long a command waits before it is resent after ``TRYAGAIN``.
TRYAGAIN_PAUSE = 0.05
#: Least time between two readings of a cluster's slot map.
REFRESH_INTERVAL = 0.1


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
    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._connection._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection._lost(self, exc)


Locate = Callable[[], Awaitable[Address]]


class _Connection:
    """One auto-pipelined socket to the server ``locate`` names at each connect.

    ``hello`` runs first on every new socket (AUTH, SELECT, ROLE); with
    ``primary_only`` the server must answer ``ROLE`` as a primary."""

    def __init__(
        self,
        locate: Locate,
        hello: Sequence[Command],
        *,
        connect_timeout: float,
        timeout: float,
        primary_only: bool = False,
    ) -> None:
        self._locate = locate
        self._hello = [*hello, ("ROLE",)] if primary_only else list(hello)
        self._primary_only = primary_only
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self.address: Address | None = None  # of the socket now open
        self._loop: asyncio.AbstractEventLoop | None = None
        self._protocol: _Protocol | None = None  # ready for commands
        self._live: _Protocol | None = None  # whose reply stream ``_waiters`` follows
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._reader = self._new_reader()
        self._waiters: deque[_Waiter] = deque()
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None

    @staticmethod
    def _new_reader() -> hiredis.Reader:
        return hiredis.Reader(encoding="utf-8", replyError=ResponseError)

    async def send(self, commands: Sequence[Command], count: int) -> list[Any]:
        """Queue ``commands`` for the next write; their ``count`` raw replies."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._reset(loop)  # a new event loop cannot use the old one's socket
        if self._protocol is None:
            await self._connect()
        waiter = _Waiter(loop.create_future(), count, time.monotonic() + self._timeout)
        self._outgoing.extend(_pack(c) for c in commands)
        self._waiters.append(waiter)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout / 2, self._watch)
        replies = await waiter.future
        if self._primary_only and any(_demoted(r) for r in replies):
            self.forget(ConnectionError("the Redis primary was demoted to a replica"))
        return replies

    def forget(self, error: Exception) -> None:
        """Drop the open socket (its server is no longer the one we want)."""
        if self._live is not None:
            self._drop(self._live, error)

    async def aclose(self) -> None:
        self.forget(ConnectionError("the Redis link was closed"))
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

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
        address = await self._locate()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), *address),
                self._connect_timeout,
            )
        except TimeoutError as exc:
            raise TimeoutError(f"connecting to Redis at {address} timed out") from exc
        except OSError as exc:  # refused, unreachable, ...
            raise ConnectionError(f"cannot connect to Redis at {address}: {exc}") from exc
        assert protocol.transport is not None
        self._live, self._reader = protocol, self._new_reader()  # a fresh reply stream
        self.address = address
        if self._hello:
            await self._greet(protocol, address)
        return protocol

    async def _greet(self, protocol: _Protocol, address: Address) -> None:
        assert protocol.transport is not None
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self._connect_timeout
        waiter = _Waiter(loop.create_future(), len(self._hello), deadline)
        self._waiters.append(waiter)
        protocol.transport.write(b"".join(_pack(c) for c in self._hello))
        try:
            replies = await asyncio.wait_for(waiter.future, self._connect_timeout)
            for reply in replies:
                if isinstance(reply, ResponseError):
                    raise ConnectionError(f"Redis refused the connection setup: {reply}")
            if self._primary_only and replies[-1][0] != "master":
                raise ConnectionError(f"Redis at {address} is a {replies[-1][0]}, not the primary")
        except BaseException:
            self._drop(protocol, None)
            raise

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


def _demoted(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith("READONLY")


def _fixed(address: Address) -> Locate:
    async def locate() -> Address:
        return address

    return locate


def _auth(username: str | None, password: str | None) -> list[Command]:
    if password is None:
        return []
    return [("AUTH", username, password) if username else ("AUTH", password)]


# -- Sentinel ---------------------------------------------------------------------------


class _Sentinels:
    """Asks the sentinels, the last one that answered first, where the primary is."""

    def __init__(self, nodes: Sequence[Address], name: str, timeout: float) -> None:
        self._name = name
        self._sentinels = [
            _Connection(_fixed(n), [], connect_timeout=timeout, timeout=timeout) for n in nodes
        ]

    async def primary(self) -> Address:
        for i, sentinel in enumerate(self._sentinels):
            try:
                (reply,) = await sentinel.send(
                    [("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self._name)], 1
                )
            except (ConnectionError, TimeoutError):
                continue
            if isinstance(reply, list) and len(reply) == 2:
                self._sentinels.insert(0, self._sentinels.pop(i))
                return reply[0], int(reply[1])
        raise ConnectionError(f"no sentinel knows where the Redis primary {self._name!r} is")

    async def aclose(self) -> None:
        for sentinel in self._sentinels:
            await sentinel.aclose()


# -- Cluster ----------------------------------------------------------------------------

#: Commands that name no key: any node answers them.
_KEYLESS = frozenset(
    {"PING", "ECHO", "SCRIPT", "CLIENT", "INFO", "TIME", "CLUSTER", "DBSIZE", "WAIT"}
)
_SCRIPTED = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})
SLOTS = 16384


def command_slot(command: Command) -> int | None:
    """The hash slot of ``command``'s key, or None for a keyless command. Every
    command statelab sends names its key first (scripts: their first key)."""
    name = str(command[0]).upper()
    if name in _SCRIPTED:
        key = command[3] if len(command) > 3 and int(command[2]) > 0 else None
    elif name in _KEYLESS or len(command) < 2:
        key = None
    else:
        key = command[1]
    if key is None:
        return None
    return key_slot(key if isinstance(key, bytes) else str(key).encode())


def batch_slot(commands: Sequence[Command]) -> int | None:
    """The one slot all of ``commands`` touch; ``ValueError`` when they touch several
    (Redis would refuse the transaction with CROSSSLOT)."""
    slots = {s for s in map(command_slot, commands) if s is not None}
    if len(slots) > 1:
        keys = [c[1] for c in commands if len(c) > 1]
        raise ValueError(f"a transaction over several hash slots ({keys}): tag the keys")
    return slots.pop() if slots else None


class _Cluster:
    """The primaries of a Redis Cluster, each behind one ``_Connection``, and which of
    them serves each slot."""

    def __init__(
        self, seeds: Sequence[Address], hello: list[Command], connect_timeout: float, timeout: float
    ) -> None:
        self._seeds = list(seeds)
        self._hello = hello
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._nodes: dict[Address, _Connection] = {}
        self._slots: list[Address | None] = [None] * SLOTS
        self._known = False  # a slot map has been read
        self._stale = True  # the map may be wrong: read it again (in the background)
        self._refreshed = 0.0
        self._refreshing: asyncio.Future[None] | None = None

    def _node(self, address: Address) -> _Connection:
        node = self._nodes.get(address)
        if node is None:
            node = _Connection(
                _fixed(address),
                self._hello,
                connect_timeout=self._connect_timeout,
                timeout=self._timeout,
            )
            self._nodes[address] = node
        return node

    async def send(self, slot: int | None, commands: Sequence[Command], count: int) -> list[Any]:
        """Send to the primary of ``slot`` (any node for None), following redirections."""
        if slot is None:
            return await self._send_anywhere(commands, count)
        return await self._send_to_slot(slot, commands, count)

    async def _send_anywhere(self, commands: Sequence[Command], count: int) -> list[Any]:
        """A keyless command (PING): to the first primary that answers, so one dead
        primary does not make the whole cluster look unreachable."""
        await self._fresh_enough()
        candidates = dict.fromkeys([*(a for a in self._slots if a is not None), *self._seeds])
        failure: Exception = ConnectionError("no Redis Cluster node is known")
        for address in candidates:
            try:
                return await self._node(address).send(commands, count)
            except (ConnectionError, TimeoutError) as exc:
                self._stale, failure = True, exc
        raise failure

    async def _send_to_slot(self, slot: int, commands: Sequence[Command], count: int) -> list[Any]:
        asking: Address | None = None
        for _ in range(MAX_REDIRECTS):
            await self._fresh_enough()
            address = asking or self._owner(slot)
            try:
                if asking is not None:
                    replies = (await self._node(asking).send([("ASKING",), *commands], count + 1))[
                        1:
                    ]
                else:
                    replies = await self._node(address).send(commands, count)
            except (ConnectionError, TimeoutError):
                self._stale = True  # its replica may be promoted: read the map again
                raise
            asking = None
            redirect = _redirection(replies)
            if redirect is None:
                return replies
            kind, target = redirect
            if kind == "MOVED":
                self._slots[slot] = target
                self._stale = True  # a whole range probably moved
            elif kind == "ASK" and count == 1:
                asking = target
            else:  # TRYAGAIN, or ASK inside a transaction: the migration ends soon
                await asyncio.sleep(TRYAGAIN_PAUSE)
        raise ConnectionError(f"Redis Cluster redirected a command {MAX_REDIRECTS} times")

    def _owner(self, slot: int) -> Address:
        address = self._slots[slot]
        if address is None:
            self._stale = True
            raise ConnectionError(f"no Redis Cluster primary serves slot {slot}")
        return address

    async def _fresh_enough(self) -> None:
        """Wait for a slot map only when there is none yet. A stale one is read again
        in the background: commands for the slots of live primaries must not wait
        (nor fail) because one primary is down."""
        if not self._known:
            await self._refresh()
        elif self._stale and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.ensure_future(self._read_slots_quietly())

    async def _read_slots_quietly(self) -> None:
        try:
            await self._read_slots()
        except (ConnectionError, TimeoutError) as exc:
            log.debug("Redis Cluster slot map not read: %s", exc)

    async def _refresh(self) -> None:
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._read_slots())
        refreshing = self._refreshing
        try:
            await asyncio.shield(refreshing)
        finally:
            if self._refreshing is refreshing and refreshing.done():
                self._refreshing = None

    async def _read_slots(self) -> None:
        """``CLUSTER SLOTS`` from the first node that answers (known ones, then seeds)."""
        pause = self._refreshed + REFRESH_INTERVAL - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        self._refreshed = time.monotonic()
        candidates = dict.fromkeys([*(a for a in self._slots if a is not None), *self._seeds])
        for address in candidates:
            try:
                (reply,) = await self._node(address).send([("CLUSTER", "SLOTS")], 1)
            except (ConnectionError, TimeoutError):
                continue
            if isinstance(reply, ResponseError):
                continue
            self._apply(reply, address[0])
            return
        raise ConnectionError(f"no Redis Cluster node answers (tried {list(candidates)})")

    def _apply(self, ranges: list[list[Any]], asked_host: str) -> None:
        slots: list[Address | None] = [None] * SLOTS
        for start, end, primary, *_replicas in ranges:
            host = primary[0] or asked_host  # "" means the host we asked
            for slot in range(int(start), int(end) + 1):
                slots[slot] = (host, int(primary[1]))
        self._slots = slots
        self._known, self._stale = True, False

    async def aclose(self) -> None:
        for node in self._nodes.values():
            await node.aclose()


def _redirection(replies: list[Any]) -> tuple[str, Address] | None:
    """The first MOVED/ASK/TRYAGAIN among ``replies``, with its target."""
    for reply in replies:
        if not isinstance(reply, ResponseError):
            continue
        text = str(reply)
        if text.startswith(("MOVED ", "ASK ")):
            kind, _slot, target = text.split(" ", 2)
            host, _, port = target.rpartition(":")
            return kind, (host, int(port))
        if text.startswith("TRYAGAIN"):
            return "TRYAGAIN", ("", 0)
    return None


# -- the link ---------------------------------------------------------------------------


class RedisLink:
    """The request path's Redis: auto-pipelined connections shared by every task of
    the process, to one server, a Sentinel-watched primary, or a Redis Cluster."""

    def __init__(
        self,
        address: RedisAddress,
        *,
        connect_timeout: float = 1.0,
        timeout: float = 2.0,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self.address = address
        # WAIT after every write made through a script or a transaction (see ``run``).
        self._wait: list[Command] = (
            [("WAIT", wait_replicas, wait_timeout_ms)] if wait_replicas > 0 else []
        )
        self.commands = 0  # sent so far (each command of a batch or transaction counts)
        hello = _auth(address.username, address.password)
        self._sentinels: _Sentinels | None = None
        self._cluster: _Cluster | None = None
        self._single: _Connection | None = None
        if address.kind == "cluster":
            self._cluster = _Cluster(address.nodes, hello, connect_timeout, timeout)
            return
        if address.db:
            hello.append(("SELECT", address.db))
        locate = _fixed(address.nodes[0])
        if address.kind == "sentinel":
            assert address.primary is not None
            self._sentinels = _Sentinels(address.nodes, address.primary, connect_timeout)
            locate = self._sentinels.primary
        self._single = _Connection(
            locate,
            hello,
            connect_timeout=connect_timeout,
            timeout=timeout,
            primary_only=address.kind == "sentinel",
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisLink:
        """Any URL of ``statelab.redisurl`` (one server, Sentinel or Cluster)."""
        return cls(parse_redis_url(url), **options)

    # -- the API -------------------------------------------------------------------

    async def call(self, *args: Arg) -> Any:
        """One command; an error reply raises ``redis.exceptions.ResponseError``."""
        self.commands += 1
        if self._single is not None:
            (reply,) = await self._single.send([args], 1)
        else:
            assert self._cluster is not None
            (reply,) = await self._cluster.send(command_slot(args), [args], 1)
        return _checked(reply)

    async def batch(self, commands: Sequence[Command], *, transaction: bool = False) -> list[Any]:
        """Several commands in one round trip; with ``transaction`` inside MULTI/EXEC,
        so no other client's command runs between them. Raises the first error reply.
        In a cluster a transaction must touch one hash slot (``ValueError`` if not)."""
        if transaction:
            framed = [("MULTI",), *commands, ("EXEC",), *self._wait]
            slot = batch_slot(commands) if self._cluster is not None else None
            replies = self._replicated(await self._send(framed, slot))
            for reply in replies[:-1]:  # MULTI's OK, QUEUED each (or why not)
                _checked(reply)
            results = _checked(replies[-1])  # EXECABORT raises here
            if results is None:  # a WATCHed key changed
                raise ResponseError("transaction aborted")
        elif self._cluster is not None:
            # Each to its own slot's primary; still one write per node and event-loop turn.
            self.commands += len(commands)
            cluster = self._cluster
            sent = [cluster.send(command_slot(c), [c], 1) for c in commands]
            results = [reply for (reply,) in await asyncio.gather(*sent)]
        else:
            results = await self._send(commands, None)
        return [_checked(result) for result in results]

    async def _send(self, commands: Sequence[Command], slot: int | None) -> list[Any]:
        self.commands += len(commands)
        if self._single is not None:
            return await self._single.send(commands, len(commands))
        assert self._cluster is not None
        return await self._cluster.send(slot, commands, len(commands))

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """EVALSHA, falling back to EVAL (which caches the script) when Redis lacks it.

        With ``wait_replicas``, the script's writes must reach that many replicas
        (WAIT, sent in the same write) before it counts as done; if they do not in
        ``wait_timeout_ms`` the call fails as unavailable (503): the primary has the
        write, but a failover now could lose it, so it is not acknowledged."""
        evalsha: Command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        slot = command_slot(evalsha) if self._cluster is not None else None
        replies = await self._send([evalsha, *self._wait], slot)
        if isinstance(replies[0], ResponseError) and str(replies[0]).startswith("NOSCRIPT"):
            evaluated: Command = ("EVAL", script.body, len(keys), *keys, *args)
            replies = await self._send([evaluated, *self._wait], slot)
        reply = _checked(replies[0])  # a refused write changed nothing: its error first
        self._replicated(replies)
        return reply

    def _replicated(self, replies: list[Any]) -> list[Any]:
        """``replies`` without WAIT's; ``ConnectionError`` if too few replicas had them."""
        if not self._wait:
            return replies
        wanted, acked = int(self._wait[0][1]), replies[-1]
        if not isinstance(acked, int) or acked < wanted:
            raise ConnectionError(f"the write reached {acked} of {wanted} Redis replicas in time")
        return replies[:-1]

    async def aclose(self) -> None:
        for part in (self._single, self._sentinels, self._cluster):
            if part is not None:
                await part.aclose()
