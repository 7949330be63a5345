"""The menu and its prices: kept in SQL, served through a cache placement.

SQL (``menu_items``) holds the one authoritative menu. Every page, ``GET /api/menu``
and every cart answer read it through the cache placement (``cached``); checkout
reads SQL itself (``current``) and refuses to charge a total the customer was not
shown (``web/shop.py``). The cache placements:

- ``memory``: each replica keeps its own copy, loaded from SQL and reloaded once it
  is ``ttl`` seconds old. A price changed through another replica shows here up to
  ``ttl`` seconds late: stale answers, the cost C15 measures. The replica that made
  the change reloads its own copy at once.
- ``redis``: one copy shared by every replica, a hash in Redis. The replica that
  changes a price replaces it right after the SQL change commits, so every replica
  reads the new price on its next request. A missing copy is loaded from SQL by
  whichever replica misses it first.

Versions keep the shared copy from going back in time. The menu's version is the
sum of its items' change counters, so it grows with every committed price change;
Redis keeps a copy only if its version is newer than the one it holds. A replica
that read SQL just before a change and stores its copy just after cannot bury the
new prices: its copy is older, and refused.

Failure model: a copy that must be (re)loaded while SQL is down, or any read of the
shared copy while Redis is down, raises ``Unavailable`` (503), as every placement
does; a cache never serves a copy older than its TTL. A price change first checks
that Redis answers (by dropping the shared copy), so a change is refused rather than
made where the cache could not hear of it. Should Redis fail in the moment between
the SQL commit and the replacement, the change stands and the old copy lives at most
``ttl`` seconds: the key's TTL is that backstop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from statelab.db import models
from statelab.db.engine import READ_ONLY
from statelab.domain.errors import NotFound, Unavailable
from statelab.domain.shop import Menu, MenuItem, valid_price
from statelab.state import keys
from statelab.state.errors import store_guard
from statelab.state.reads import Read, local, read_one
from statelab.state.redislink import Arg, RedisLink, Script

log = logging.getLogger(__name__)


class MenuStore(Protocol):
    """The menu as a replica serves it. ``name`` is the cache placement."""

    name: str

    async def cached(self) -> Menu:
        """The menu through the cache: what pages and cart answers show. Up to the
        cache's TTL old (``memory``) or as fresh as the last change (``redis``)."""
        ...

    def reading(self) -> Read[Menu]:
        """``cached`` as a ``Read``, to send with other stores' reads."""
        ...

    async def current(self) -> Menu:
        """The authoritative menu, read from SQL now (what checkout charges)."""
        ...

    async def set_price(self, item_id: int, price_cents: int) -> MenuItem:
        """Change one item's price in SQL and make the cache hear of it."""
        ...


_MENU_COLUMNS = (
    models.MenuItem.id,
    models.MenuItem.name,
    models.MenuItem.kind,
    models.MenuItem.price_cents,
    models.MenuItem.version,
)


class SqlMenu:
    """The ``menu_items`` table: the one authoritative menu."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def current(self) -> Menu:
        """One read, in no transaction: on SQLite it waits for no writer (``READ_ONLY``)."""
        with store_guard("database"):
            async with self._sessions() as db:
                await db.connection(execution_options=READ_ONLY)
                rows = (await db.execute(select(*_MENU_COLUMNS).order_by(models.MenuItem.id))).all()
        items = tuple(MenuItem(r.id, r.name, r.kind, r.price_cents) for r in rows)
        return Menu(items, sum(r.version for r in rows))

    async def set_price(self, item_id: int, price_cents: int) -> MenuItem:
        """One statement: the new price, the item's change counter up by one."""
        valid_price(price_cents)
        table = models.MenuItem
        change = (
            update(table)
            .where(table.id == item_id)
            .values(price_cents=price_cents, version=table.version + 1, updated_at=func.now())
            .returning(table.id, table.name, table.kind, table.price_cents)
        )
        with store_guard("database"):
            async with self._sessions() as db, db.begin():
                row = (await db.execute(change)).first()
        if row is None:
            raise NotFound(f"menu item {item_id} does not exist")
        return MenuItem(row.id, row.name, row.kind, row.price_cents)


class MemoryMenuCache:
    """A copy in this replica, reloaded from SQL once it is ``ttl`` seconds old."""

    name = "memory"

    def __init__(
        self, source: SqlMenu, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._source = source
        self._ttl = ttl
        self._clock = clock
        self._copy: Menu | None = None
        self._loaded_at = -math.inf  # when the read behind ``_copy`` started
        # One reload at a time: a burst of requests at expiry reads SQL once.
        self._reloading = asyncio.Lock()

    def _fresh(self) -> Menu | None:
        if self._copy is not None and self._clock() - self._loaded_at < self._ttl:
            return self._copy
        return None

    async def cached(self) -> Menu:
        return self._fresh() or await self._reload(force=False)

    def reading(self) -> Read[Menu]:
        return local(self.cached)

    async def current(self) -> Menu:
        return await self._source.current()

    async def set_price(self, item_id: int, price_cents: int) -> MenuItem:
        item = await self._source.set_price(item_id, price_cents)
        # A reload that began before the change committed may be running: reload
        # again after it rather than take its copy as fresh.
        await self._reload(force=True)
        return item

    async def _reload(self, *, force: bool) -> Menu:
        async with self._reloading:
            if not force and (copy := self._fresh()) is not None:
                return copy  # another request reloaded it while this one waited
            started = self._clock()
            menu = await self._source.current()
            self._copy, self._loaded_at = menu, started
            return menu


#: Store the copy in ARGV[2] (version ARGV[1]) unless the one held is as new;
#: PEXPIRE ARGV[3] ms. Returns 1 if stored.
_REPLACE = Script.of(
    """
local held = tonumber(redis.call('HGET', KEYS[1], 'version'))
if held and held >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'items', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)


def _encode(menu: Menu) -> bytes:
    return orjson.dumps([[i.id, i.name, i.kind, i.price_cents] for i in menu.items])


def _decode(version: str, raw: str) -> Menu:
    return Menu(tuple(MenuItem(*row) for row in orjson.loads(raw)), int(version))


class RedisMenuCache:
    """One copy in Redis for every replica, replaced by the replica that changes a
    price; the key's TTL is a backstop (see the module docstring)."""

    name = "redis"

    def __init__(self, source: SqlMenu, redis: RedisLink, ttl: float) -> None:
        self._source = source
        self._redis = redis
        self._ttl_ms = max(1, round(ttl * 1000))
        # The last copy decoded, by its raw value: most reads find it unchanged.
        self._last: tuple[str, Menu] | None = None
        self._filling: asyncio.Future[Menu] | None = None  # the load misses wait for

    async def cached(self) -> Menu:
        return await read_one(self._redis, self.reading())

    def reading(self) -> Read[Menu]:
        return Read([("HMGET", keys.menu(), "version", "items")], self._answer)

    async def _answer(self, replies: list[Any]) -> Menu:
        version, raw = replies[0]
        if version is None or raw is None:
            return await self._fill()
        if self._last is None or self._last[0] != raw:
            self._last = (raw, _decode(version, raw))
        return self._last[1]

    async def current(self) -> Menu:
        return await self._source.current()

    async def set_price(self, item_id: int, price_cents: int) -> MenuItem:
        with store_guard("redis"):  # refuse the change while the cache cannot hear of it
            await self._redis.call("DEL", keys.menu())
        item = await self._source.set_price(item_id, price_cents)
        try:
            await self._load()  # its own load: one in flight may have read the old price
        except Unavailable as exc:
            log.warning(
                "price of item %s changed, but the shared menu could not be replaced (%s): "
                "replicas may show the old price until the copy expires",
                item_id,
                exc.detail,
            )
        return item

    async def offer(self, menu: Menu) -> bool:
        """Store ``menu`` as the shared copy unless Redis holds one as new; whether
        it was stored."""
        args: list[Arg] = [menu.version, _encode(menu), self._ttl_ms]
        with store_guard("redis"):
            return bool(await self._redis.run(_REPLACE, [keys.menu()], args))

    async def _fill(self) -> Menu:
        """The menu for a request that missed the shared copy. When the copy expires,
        every request in flight misses it at once: they share one load, so a replica
        reads SQL once, not once per request."""
        if self._filling is None or self._filling.done():
            self._filling = asyncio.ensure_future(self._load())
        return await asyncio.shield(self._filling)

    async def _load(self) -> Menu:
        """Load the menu from SQL and offer it to Redis."""
        menu = await self._source.current()
        await self.offer(menu)
        return menu
