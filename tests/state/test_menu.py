"""The menu in SQL and its cache placements, on real SQLite, PostgreSQL and Redis:
two caches over one database stand for two replicas of one deployment."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from statelab.config import ConfigError, build_settings
from statelab.db.engine import make_engine, sessionmaker
from statelab.domain.errors import InvalidInput, NotFound, Unavailable
from statelab.domain.shop import MAX_PRICE_CENTS, Menu, load_menu
from statelab.state import keys
from statelab.state.menu import MemoryMenuCache, RedisMenuCache, SqlMenu
from statelab.state.redislink import RedisLink

TTL = 30.0
PIZZA = 1


class Clock:
    """A clock the test moves by hand: expiry without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sessions(sql_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(sql_url)
    try:
        yield sessionmaker(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def link(redis_url: str) -> AsyncIterator[RedisLink]:
    redis = RedisLink.from_url(redis_url)
    try:
        yield redis
    finally:
        await redis.aclose()


def _price(menu: Menu, item_id: int = PIZZA) -> int:
    return menu.get(item_id).price_cents


async def test_the_migration_seeds_the_packaged_menu(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    menu = await SqlMenu(sessions).current()
    assert menu.items == load_menu().items
    assert menu.version == len(menu.items)  # every item at its first version


async def test_a_price_change_is_stored_and_counted(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sql = SqlMenu(sessions)
    before = await sql.current()
    item = await sql.set_price(PIZZA, 1234)
    assert (item.id, item.name, item.price_cents) == (PIZZA, "Margherita", 1234)
    after = await sql.current()
    assert _price(after) == 1234
    assert after.version == before.version + 1
    assert [i for i in after.items if i.id != PIZZA] == [i for i in before.items if i.id != PIZZA]


async def test_bad_prices_and_unknown_items_change_nothing(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sql = SqlMenu(sessions)
    before = await sql.current()
    for bad in (0, -1, MAX_PRICE_CENTS + 1, True):
        with pytest.raises(InvalidInput):
            await sql.set_price(PIZZA, bad)
    with pytest.raises(NotFound):
        await sql.set_price(999, 100)
    assert await sql.current() == before


async def test_memory_caches_are_stale_on_other_replicas_until_their_ttl(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock()
    r1 = MemoryMenuCache(SqlMenu(sessions), TTL, clock)
    r2 = MemoryMenuCache(SqlMenu(sessions), TTL, clock)
    old = _price(await r1.cached())
    assert _price(await r2.cached()) == old
    await r1.set_price(PIZZA, old + 100)
    assert _price(await r1.cached()) == old + 100, "the replica that changed it reloads"
    assert _price(await r2.current()) == old + 100, "SQL has the new price"
    clock.now += TTL - 0.01
    assert _price(await r2.cached()) == old, "another replica's copy is stale"
    clock.now += 0.01
    assert _price(await r2.cached()) == old + 100, "and reloaded once TTL old"


async def test_a_shared_cache_serves_a_change_to_every_replica_at_once(
    sessions: async_sessionmaker[AsyncSession], link: RedisLink
) -> None:
    r1 = RedisMenuCache(SqlMenu(sessions), link, TTL)
    r2 = RedisMenuCache(SqlMenu(sessions), link, TTL)
    old = _price(await r2.cached())  # the shared copy is loaded
    await r1.set_price(PIZZA, old + 100)
    assert _price(await r2.cached()) == old + 100
    ttl_ms = await link.call("PTTL", keys.menu())
    assert 0 < ttl_ms <= TTL * 1000, "the TTL is a backstop"


async def test_an_older_copy_never_replaces_a_newer_one(
    sessions: async_sessionmaker[AsyncSession], link: RedisLink
) -> None:
    """A replica that read SQL before a change and stores its copy after it."""
    r1 = RedisMenuCache(SqlMenu(sessions), link, TTL)
    r2 = RedisMenuCache(SqlMenu(sessions), link, TTL)
    read_before = await SqlMenu(sessions).current()
    await r1.set_price(PIZZA, 4321)
    assert not await r2.offer(read_before)
    assert _price(await r2.cached()) == 4321
    await link.call("DEL", keys.menu())  # expired: any copy may be stored again
    assert await r2.offer(read_before)


async def test_a_shared_cache_without_redis_is_unavailable_and_changes_nothing(
    sessions: async_sessionmaker[AsyncSession], closed_port: int
) -> None:
    dead = RedisLink.from_url(f"redis://127.0.0.1:{closed_port}/0")
    cache = RedisMenuCache(SqlMenu(sessions), dead, TTL)
    try:
        with pytest.raises(Unavailable):
            await cache.cached()
        with pytest.raises(Unavailable):
            await cache.set_price(PIZZA, 4321)
    finally:
        await dead.aclose()
    assert _price(await SqlMenu(sessions).current()) == load_menu().get(PIZZA).price_cents


def test_profiles_place_the_cache_and_redis_is_required_for_the_shared_one() -> None:
    assert build_settings(profile="stateful").placement("cache") == "memory"
    assert build_settings(profile="stateless", redis_url="redis://x").placement("cache") == "redis"
    assert build_settings(profile="token", redis_url="redis://x").placement("cache") == "redis"
    with pytest.raises(ConfigError, match="--redis-url is required by cache=redis"):
        build_settings(profile="stateful", place={"cache": "redis"})
    with pytest.raises(ConfigError, match="cache_ttl_seconds"):
        build_settings(profile="stateful", cache_ttl_seconds=0)
