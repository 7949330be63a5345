"""What is in a cart: the cart placements.

- ``memory``: a dict in this replica.
- ``redis``: one hash per cart; every change is a single atomic script, so
  concurrent changes through any number of replicas never lose an update.
- ``client``: the cart travels in a signed, size-limited cookie. No server
  keeps it; two concurrent writes from one client race, and the last one wins.
- ``db``: rows in SQL (``carts``, ``cart_lines``). A change runs in one
  transaction that first takes the cart's row, so changes of one cart through any
  number of replicas are serialised; each line's limits are checked by the very
  statement that writes it, and a refused change rolls back whole. A cart is
  forgotten ``ttl`` seconds after its last change, like the Redis key's TTL;
  the periodic sweep deletes it (``sweep_carts``).

A cart belongs to an *owner*: ``u:<user id>`` for a logged-in user, ``a:<random
id>`` for an anonymous visitor. ``CartRef`` carries the owner and, for the client
placement, the cookie value in and out.

Memory carts are bounded, so a flood of anonymous visitors cannot grow a replica
without limit. A cart is forgotten ``ttl`` seconds after its last change (what the
Redis key's TTL does). At most ``max_carts`` are held; room for a new one is made,
in this order, from:

1. expired carts;
2. anonymous visitors' carts, least recently changed first;
3. only for a logged-in user's new cart: other users' carts, least recently
   changed first.

An anonymous visitor's new cart never displaces a user's: while every cart held
belongs to a user, it is refused with ``Unavailable`` (503, Retry-After).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from redis.exceptions import ResponseError
from sqlalchemy import Select, delete, exists, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from statelab.db import models
from statelab.db.engine import READ_ONLY, upsert, writing
from statelab.domain.errors import LimitExceeded, Unavailable
from statelab.domain.shop import CartLimits, CartLines
from statelab.state import keys
from statelab.state.errors import store_guard
from statelab.state.reads import Read, local, read_one
from statelab.state.redislink import RedisLink, Script, pairs
from statelab.state.session import Session, SqlSessions

#: A session and the lines of the cart read with it.
Sighted = tuple[Session | None, CartLines]


@dataclass(slots=True)
class CartRef:
    """Whose cart, and (client placement) the signed value the client sent."""

    owner: str
    carried: str | None = None
    changed: bool = False


class CartStore(Protocol):
    name: str

    async def get(self, ref: CartRef) -> CartLines: ...

    def reading(self, ref: CartRef) -> Read[CartLines]:
        """``get`` as a ``Read``, to send with other stores' reads."""
        ...

    async def add(self, ref: CartRef, lines: CartLines) -> CartLines:
        """Add quantities to lines (creating them); the whole cart after the change."""
        ...

    async def set(self, ref: CartRef, item_id: int, quantity: int) -> CartLines:
        """Set one line's quantity; 0 removes it."""
        ...

    async def clear(self, ref: CartRef) -> None: ...


def _check_add(current: CartLines, lines: CartLines, limits: CartLimits) -> CartLines:
    merged = dict(current)
    for item_id, qty in lines.items():
        limits.check_quantity(qty)
        merged[item_id] = merged.get(item_id, 0) + qty
        limits.check_quantity(merged[item_id])
    limits.check_lines(merged)
    return merged


def _check_set(current: CartLines, item_id: int, quantity: int, limits: CartLimits) -> CartLines:
    limits.check_quantity(quantity, allow_zero=True)
    merged = dict(current)
    if quantity == 0:
        merged.pop(item_id, None)
    else:
        merged[item_id] = quantity
    limits.check_lines(merged)
    return merged


@dataclass(slots=True)
class _Held:
    lines: CartLines
    changed: float  # clock time of the last change


class MemoryCarts:
    """Carts in this replica's memory, expiring and bounded (see the module docstring).
    Single-threaded asyncio makes each change atomic."""

    name = "memory"

    def __init__(
        self,
        limits: CartLimits,
        ttl: float,
        max_carts: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = limits
        self._ttl = ttl
        self._max = max_carts
        self._clock = clock
        # Least recently changed first, so expired and evictable carts are in front.
        self._anonymous: OrderedDict[str, _Held] = OrderedDict()
        self._users: OrderedDict[str, _Held] = OrderedDict()

    def __len__(self) -> int:
        return len(self._anonymous) + len(self._users)

    async def get(self, ref: CartRef) -> CartLines:
        return dict(self._lines(ref.owner))

    def reading(self, ref: CartRef) -> Read[CartLines]:
        return local(lambda: self.get(ref))

    async def add(self, ref: CartRef, lines: CartLines) -> CartLines:
        return self._put(ref.owner, _check_add(self._lines(ref.owner), lines, self._limits))

    async def set(self, ref: CartRef, item_id: int, quantity: int) -> CartLines:
        updated = _check_set(self._lines(ref.owner), item_id, quantity, self._limits)
        return self._put(ref.owner, updated)

    async def clear(self, ref: CartRef) -> None:
        self._pool(ref.owner).pop(ref.owner, None)

    def _pool(self, owner: str) -> OrderedDict[str, _Held]:
        return self._users if owner.startswith("u:") else self._anonymous

    def _lines(self, owner: str) -> CartLines:
        pool = self._pool(owner)
        held = pool.get(owner)
        if held is None:
            return {}
        if self._clock() - held.changed >= self._ttl:
            del pool[owner]
            return {}
        return held.lines

    def _put(self, owner: str, lines: CartLines) -> CartLines:
        pool = self._pool(owner)
        if not lines:  # an emptied cart is not kept
            pool.pop(owner, None)
            return {}
        if owner not in pool:
            self._make_room(owner)
        pool[owner] = _Held(lines, self._clock())
        pool.move_to_end(owner)
        return dict(lines)

    def _make_room(self, owner: str) -> None:
        now = self._clock()
        for pool in (self._anonymous, self._users):
            while pool and now - next(iter(pool.values())).changed >= self._ttl:
                pool.popitem(last=False)
        if len(self) < self._max:
            return
        if self._anonymous:
            self._anonymous.popitem(last=False)
        elif owner.startswith("u:"):
            self._users.popitem(last=False)
        else:
            oldest = next(iter(self._users.values()))
            wait = int(oldest.changed + self._ttl - now) + 1
            raise Unavailable(
                f"this replica holds as many carts as it may ({self._max}), all of "
                "logged-in users: log in to keep a cart, or try again later",
                retry_after=wait,
            )


# KEYS[1] cart hash; ARGV: ttl, max_lines, max_qty, then item/qty pairs.
# Checks every limit before changing anything, so a refused add changes nothing.
_ADD = Script.of("""
local ttl, max_lines, max_qty = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lines = redis.call('HLEN', KEYS[1])
for i = 4, #ARGV, 2 do
  local have = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if have == 0 then lines = lines + 1 end
  if have + tonumber(ARGV[i + 1]) > max_qty then return {err = 'quantity'} end
end
if lines > max_lines then return {err = 'lines'} end
for i = 4, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ttl)
return redis.call('HGETALL', KEYS[1])
""")

# KEYS[1] cart hash; ARGV: ttl, max_lines, item, qty (0 deletes the line).
_SET = Script.of("""
local ttl, max_lines, qty = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
if qty == 0 then
  redis.call('HDEL', KEYS[1], ARGV[3])
else
  local new = redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0
  if new and redis.call('HLEN', KEYS[1]) + 1 > max_lines then return {err = 'lines'} end
  redis.call('HSET', KEYS[1], ARGV[3], qty)
  redis.call('EXPIRE', KEYS[1], ttl)
end
return redis.call('HGETALL', KEYS[1])
""")


def _lines_from_flat(flat: list[str]) -> CartLines:
    return {int(item): int(qty) for item, qty in pairs(flat).items()}


class RedisCarts:
    """Carts as Redis hashes changed only by atomic scripts: no lost updates."""

    name = "redis"

    def __init__(self, redis: RedisLink, limits: CartLimits, ttl: int) -> None:
        self._redis = redis
        self._limits = limits
        self._ttl = ttl

    async def get(self, ref: CartRef) -> CartLines:
        return await read_one(self._redis, self.reading(ref))

    def reading(self, ref: CartRef) -> Read[CartLines]:
        async def answer(replies: list[Any]) -> CartLines:
            return _lines_from_flat(replies[0])

        return Read([("HGETALL", keys.cart(ref.owner))], answer)

    async def add(self, ref: CartRef, lines: CartLines) -> CartLines:
        for qty in lines.values():
            self._limits.check_quantity(qty)
        args: list[int] = [self._ttl, self._limits.max_lines, self._limits.max_quantity]
        for item_id, qty in lines.items():
            args += [item_id, qty]
        flat = await self._run(_ADD, ref, args)
        return _lines_from_flat(flat)

    async def set(self, ref: CartRef, item_id: int, quantity: int) -> CartLines:
        self._limits.check_quantity(quantity, allow_zero=True)
        args = [self._ttl, self._limits.max_lines, item_id, quantity]
        return _lines_from_flat(await self._run(_SET, ref, args))

    async def clear(self, ref: CartRef) -> None:
        with store_guard("redis"):
            await self._redis.call("DEL", keys.cart(ref.owner))

    async def _run(self, script: Script, ref: CartRef, args: list[int]) -> list[str]:
        try:
            with store_guard("redis"):
                result: list[str] = await self._redis.run(script, [keys.cart(ref.owner)], args)
        except ResponseError as exc:
            if "lines" in str(exc):
                raise LimitExceeded(
                    f"a cart holds at most {self._limits.max_lines} different items"
                ) from exc
            if "quantity" in str(exc):
                raise LimitExceeded(
                    f"quantity must be between 1 and {self._limits.max_quantity}"
                ) from exc
            raise
        return result


class ClientCarts:
    """The cart as a signed value the client carries; the server keeps nothing.

    Format: ``base64url(json) + "." + base64url(hmac-sha256)``. The owner is inside
    the signed part, so a cart cookie copied from another user is ignored.
    """

    name = "client"

    def __init__(self, key: bytes, limits: CartLimits, max_bytes: int) -> None:
        self._key = key  # the cart purpose's key (statelab.keyring)
        self._limits = limits
        self._max_bytes = max_bytes

    async def get(self, ref: CartRef) -> CartLines:
        return self._read(ref)

    def reading(self, ref: CartRef) -> Read[CartLines]:
        return local(lambda: self.get(ref))

    async def add(self, ref: CartRef, lines: CartLines) -> CartLines:
        return self._write(ref, _check_add(self._read(ref), lines, self._limits))

    async def set(self, ref: CartRef, item_id: int, quantity: int) -> CartLines:
        return self._write(ref, _check_set(self._read(ref), item_id, quantity, self._limits))

    async def clear(self, ref: CartRef) -> None:
        self._write(ref, {})

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.digest(self._key, payload, "sha256"))  # one call into C

    def _read(self, ref: CartRef) -> CartLines:
        if not ref.carried:
            return {}
        body, _, signature = ref.carried.partition(".")
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            if not hmac.compare_digest(self._sign(payload), signature):
                return {}
            data = orjson.loads(payload)
            if data.get("o") != ref.owner:
                return {}
            return {int(k): int(v) for k, v in data["l"].items() if int(v) > 0}
        except (ValueError, TypeError, KeyError, AttributeError, orjson.JSONDecodeError):
            return {}

    def _write(self, ref: CartRef, lines: CartLines) -> CartLines:
        payload = orjson.dumps({"o": ref.owner, "l": {str(k): v for k, v in lines.items()}})
        value = f"{_b64(payload)}.{self._sign(payload)}"
        if len(value) > self._max_bytes:
            raise LimitExceeded(f"the cart cookie would exceed {self._max_bytes} bytes")
        ref.carried, ref.changed = value, True
        return dict(lines)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# ------------------------------------------------------------------------------ db

#: Owners as the web layer makes them (``u:<id>``, ``a:<token>``); any other value
#: (an anonymous cookie is the client's to choose) is stored under its digest, so
#: what reaches the table always fits its column.
_PLAIN_OWNER = re.compile(r"^[ua]:[A-Za-z0-9_-]{1,60}$")


def _owner_key(owner: str) -> str:
    if _PLAIN_OWNER.match(owner):
        return owner
    digest = hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()
    return "h:" + digest[:60]  # 240 bits: the column's 64 characters hold it


class SqlCarts:
    """Carts as SQL rows, changed in short transactions (see the module docstring).

    A read is one statement outside any transaction (``READ_ONLY``). A change costs
    a few statements in one transaction: forget the cart if it expired, take its
    row (renewing its expiry), write each line, read the cart."""

    name = "db"

    def __init__(
        self,
        engine: AsyncEngine,
        limits: CartLimits,
        ttl: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._limits = limits
        self._ttl = ttl
        self._clock = clock

    async def get(self, ref: CartRef) -> CartLines:
        with store_guard("database"):
            async with self._engine.connect() as conn:
                await conn.execution_options(**READ_ONLY)
                return await self._lines(conn, _owner_key(ref.owner), self._clock())

    def reading(self, ref: CartRef) -> Read[CartLines]:
        return local(lambda: self.get(ref))

    def reading_with(self, sessions: SqlSessions, credential: str, ref: CartRef) -> Read[Sighted]:
        """The session behind ``credential`` and this cart's lines, in one query
        (sessions in the same database); no session, no lines."""

        async def answer(_: list[Any]) -> Sighted:
            lines = self._query(_owner_key(ref.owner), self._clock()).subquery()
            session, rows = await sessions.resolve_beside(credential, lines)
            found = {int(r.item_id): int(r.quantity) for r in rows if r.item_id is not None}
            return session, found

        return Read((), answer)

    async def add(self, ref: CartRef, lines: CartLines) -> CartLines:
        for qty in lines.values():
            self._limits.check_quantity(qty)
        owner, now = _owner_key(ref.owner), self._clock()
        with store_guard("database"):
            async with writing(self._engine) as conn:
                await self._take(conn, owner, now)
                for item_id, qty in lines.items():
                    await self._write_line(conn, owner, item_id, qty, add=True)
                return await self._lines(conn, owner, now)

    async def set(self, ref: CartRef, item_id: int, quantity: int) -> CartLines:
        self._limits.check_quantity(quantity, allow_zero=True)
        owner, now = _owner_key(ref.owner), self._clock()
        line = models.CartLine
        with store_guard("database"):
            async with writing(self._engine) as conn:
                await self._take(conn, owner, now)
                if quantity == 0:
                    await conn.execute(
                        delete(line).where(line.owner == owner, line.item_id == item_id)
                    )
                else:
                    await self._write_line(conn, owner, item_id, quantity, add=False)
                found = await self._lines(conn, owner, now)
                if not found:  # an emptied cart is not kept
                    await conn.execute(delete(models.Cart).where(models.Cart.owner == owner))
                return found

    async def clear(self, ref: CartRef) -> None:
        cart = models.Cart
        with store_guard("database"):
            async with writing(self._engine) as conn:
                await conn.execute(delete(cart).where(cart.owner == _owner_key(ref.owner)))

    async def _take(self, conn: AsyncConnection, owner: str, now: float) -> None:
        """Forget the cart if it expired, then create or renew its row. The upsert
        locks the row until the transaction ends: the next change of this cart waits."""
        cart = models.Cart
        await conn.execute(delete(cart).where(cart.owner == owner, cart.expires_at <= now))
        taken = upsert(conn.dialect, cart).values(owner=owner, expires_at=now + self._ttl)
        await conn.execute(
            taken.on_conflict_do_update(
                index_elements=[cart.owner], set_={"expires_at": taken.excluded.expires_at}
            )
        )

    async def _write_line(
        self, conn: AsyncConnection, owner: str, item_id: int, qty: int, *, add: bool
    ) -> None:
        """Add to (or set) one line in one statement that also checks the limits: a
        new line only while the cart has room, a sum only up to the line maximum."""
        line = models.CartLine
        held = select(func.count()).where(line.owner == owner).scalar_subquery()
        present = exists().where(line.owner == owner, line.item_id == item_id)
        source = select(literal(owner), literal(item_id), literal(qty)).where(
            or_(held < self._limits.max_lines, present)
        )
        insert = upsert(conn.dialect, line).from_select(["owner", "item_id", "quantity"], source)
        summed = line.quantity + insert.excluded.quantity
        written = await conn.scalar(
            insert.on_conflict_do_update(
                index_elements=[line.owner, line.item_id],
                set_={"quantity": summed if add else insert.excluded.quantity},
                where=summed <= self._limits.max_quantity if add else None,
            ).returning(line.quantity)
        )
        if written is None:
            had = await conn.scalar(select(present))
            raise LimitExceeded(
                f"quantity must be between 1 and {self._limits.max_quantity}"
                if had
                else f"a cart holds at most {self._limits.max_lines} different items"
            )

    async def _lines(self, conn: AsyncConnection, owner: str, now: float) -> CartLines:
        rows = await conn.execute(self._query(owner, now))
        return {int(item): int(qty) for item, qty in rows}

    @staticmethod
    def _query(owner: str, now: float) -> Select[int, int]:
        """The lines of a cart that has not expired."""
        line, cart = models.CartLine, models.Cart
        return (
            select(line.item_id, line.quantity)
            .join(cart, cart.owner == line.owner)
            .where(line.owner == owner, cart.expires_at > now)
        )


async def sweep_carts(engine: AsyncEngine, now: float) -> int:
    """Delete the SQL carts (and their lines) past their expiry; returns how many."""
    cart = models.Cart
    with store_guard("database"):
        async with writing(engine) as conn:
            result = await conn.execute(delete(cart).where(cart.expires_at <= now))
    return int(result.rowcount)
