"""Where each kind of state lives. One module per kind, each with a Protocol and
its placements; ``open_stores`` builds the set the settings ask for."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from argon2 import PasswordHasher
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from statelab.config import Settings
from statelab.db.engine import make_engine, sessionmaker
from statelab.domain.shop import CartLimits, CartLines, Menu
from statelab.keyring import MAKE_SECRET, Keys
from statelab.state.cart import CartRef, CartStore, ClientCarts, MemoryCarts, RedisCarts, SqlCarts
from statelab.state.chat import ChatLimits, ChatStore, MemoryChat, RedisChat
from statelab.state.errors import store_guard
from statelab.state.files import (
    Blobs,
    DiskFiles,
    FileStore,
    ObjectFiles,
    default_object_store_url,
    object_store,
)
from statelab.state.jobs import JobQueue, QueueJobs, open_jobs
from statelab.state.ledger import Ledger, MemoryLedger, SqlLedger
from statelab.state.menu import MemoryMenuCache, MenuStore, RedisMenuCache, SqlMenu
from statelab.state.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from statelab.state.reads import local, read_together
from statelab.state.redisclient import RedisClient, redis_client
from statelab.state.redislink import RedisLink
from statelab.state.replicated_ledger import ReplicatedLedger
from statelab.state.session import (
    JwtConfig,
    JwtSessions,
    Lifetimes,
    MemorySessions,
    PureJwtSessions,
    RedisSessions,
    Session,
    SessionStore,
    SqlSessions,
)
from statelab.state.timers import InProcessTimers, PeriodicWork, SchedulerTimers, Timers
from statelab.state.users import UserStore

log = logging.getLogger(__name__)


@dataclass
class Stores:
    """Every store a replica uses, built for one set of placements."""

    settings: Settings
    keys: Keys  # one per purpose, derived from settings.secret_key
    engine: AsyncEngine
    redis: RedisClient | None  # pub/sub, blocking and queue work (chat, jobs)
    link: RedisLink | None  # plain commands on the request path (sessions, carts, limits)
    users: UserStore
    sessions: SessionStore
    carts: CartStore
    ledger: Ledger
    ratelimit: RateLimiter
    chat: ChatStore
    files: FileStore
    jobs: JobQueue
    menu: MenuStore  # the menu and prices: SQL, served through the cache placement
    timers: Timers  # where the periodic work runs from (state/timers.py)

    async def look_up(
        self, credential: str | None, cart: CartRef | None
    ) -> tuple[Session | None, CartLines, Menu]:
        """The session behind ``credential``, the lines of ``cart`` and the menu (through
        the cache), read together: whatever of them lives in Redis is read in one
        round trip, and sessions and carts both in SQL in one query. No credential:
        no session; no cart: no lines."""
        if credential and cart is not None and (sql := self._sql_tables()) is not None:
            sessions, carts = sql
            both = carts.reading_with(sessions, credential, cart)
            (session, lines), menu = await read_together(self.link, both, self.menu.reading())
            return session, lines, menu
        return await read_together(
            self.link,
            self.sessions.reading(credential) if credential else local(_nobody),
            self.carts.reading(cart) if cart is not None else local(_no_lines),
            self.menu.reading(),
        )

    def _sql_tables(self) -> tuple[SqlSessions, SqlCarts] | None:
        """The session and cart stores, where both are tables of the database."""
        if isinstance(self.sessions, SqlSessions) and isinstance(self.carts, SqlCarts):
            return self.sessions, self.carts
        return None

    async def check_ready(self) -> dict[str, bool]:
        """Whether each backing store answers right now."""
        status = {"database": await _sql_answers(self.engine)}
        if self.redis is not None and self.link is not None:
            status["redis"] = await _redis_answers(self.redis, self.link)
        if isinstance(self.ledger, ReplicatedLedger):
            status["ledger"] = self.ledger.ready  # has replayed the replication log
        return status


async def _nobody() -> None:
    return None


async def _no_lines() -> CartLines:
    return {}


async def _sql_answers(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


async def _redis_answers(redis: RedisClient, link: RedisLink) -> bool:
    try:
        with store_guard("redis"):
            return bool(await redis.ping()) and await link.call("PING") == "PONG"
    except Exception:
        return False


def make_redis(url: str) -> RedisClient:
    """One pooled client per process (one server, Sentinel or Cluster); short timeouts
    and two quick retries (redis-py's default backs off for seconds), so a dead Redis
    gives a fast 503 and a failover is still followed on the next attempt."""
    return redis_client(
        url,
        decode_responses=True,
        socket_connect_timeout=1.0,
        socket_timeout=2.0,
        health_check_interval=10,
        max_connections=200,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 2),
    )


def _jwt_config(settings: Settings, keys: Keys, ttl: int) -> JwtConfig:
    return JwtConfig(
        keys=keys.jwt,
        active_kid=settings.jwt_active_kid,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl=ttl,
        verified_cache=settings.max_verified_tokens,
    )


def _session_store(
    settings: Settings, keys: Keys, redis: RedisLink | None, engine: AsyncEngine
) -> SessionStore:
    life = Lifetimes(settings.session_idle_seconds, settings.session_absolute_seconds)
    placement = settings.placement("session")
    if placement == "memory":
        return MemorySessions(life, settings.max_memory_sessions, settings.max_sessions_per_user)
    if placement == "db":
        return SqlSessions(engine, life)
    if placement == "jwt-pure":
        return PureJwtSessions(_jwt_config(settings, keys, settings.jwt_pure_ttl_seconds))
    assert redis is not None  # Settings refuses these placements without a Redis URL
    if placement == "redis":
        return RedisSessions(redis, life)
    return JwtSessions(redis, _jwt_config(settings, keys, settings.jwt_ttl_seconds))


def _cart_store(
    settings: Settings, keys: Keys, redis: RedisLink | None, engine: AsyncEngine
) -> CartStore:
    limits = CartLimits(settings.max_cart_lines, settings.max_line_quantity)
    # Every placement forgets a cart as long after its last change as a Redis TTL does.
    ttl = settings.session_absolute_seconds
    placement = settings.placement("cart")
    if placement == "memory":
        return MemoryCarts(limits, ttl, settings.max_memory_carts)
    if placement == "client":
        return ClientCarts(keys.cart, limits, settings.max_client_cart_bytes)
    if placement == "db":
        return SqlCarts(engine, limits, ttl)
    assert redis is not None
    return RedisCarts(redis, limits, ttl=ttl)


def _timers(settings: Settings, engine: AsyncEngine, ledger: Ledger, jobs: JobQueue) -> Timers:
    work, seconds = PeriodicWork(engine, ledger), settings.timer_period_seconds
    if settings.placement("timers") == "inprocess":
        return InProcessTimers(work, seconds, settings.replica_id)
    assert isinstance(jobs, QueueJobs)  # Settings refuses timers=scheduler without jobs=queue
    return SchedulerTimers(work, seconds, jobs)


def _rate_limiter(settings: Settings, redis: RedisLink | None) -> RateLimiter:
    if settings.placement("ratelimit") == "memory":
        return MemoryRateLimiter(settings.max_rate_windows)
    assert redis is not None
    return RedisRateLimiter(redis)


def _chat_store(
    settings: Settings, redis: RedisClient | None, db: async_sessionmaker[AsyncSession]
) -> ChatStore:
    limits = ChatLimits(
        rooms_per_user=settings.chat_rooms_per_user,
        presence_ttl=settings.chat_presence_ttl_seconds,
        typing_ttl=settings.chat_typing_ttl_seconds,
    )
    if settings.placement("chat") == "memory":
        return MemoryChat(limits)
    assert redis is not None
    return RedisChat(redis, db, limits, settings.replica_id)


def _menu_store(
    settings: Settings, redis: RedisLink | None, db: async_sessionmaker[AsyncSession]
) -> MenuStore:
    source, ttl = SqlMenu(db), settings.cache_ttl_seconds
    if settings.placement("cache") == "memory":
        return MemoryMenuCache(source, ttl)
    assert redis is not None
    return RedisMenuCache(source, redis, ttl)


def _ledger(
    settings: Settings,
    db: async_sessionmaker[AsyncSession],
    redis: RedisClient | None,
    link: RedisLink | None,
) -> Ledger:
    ttl, max_keys = settings.idempotency_ttl_seconds, settings.max_memory_idempotency_keys
    placement = settings.placement("ledger")
    if placement == "memory":
        return MemoryLedger(ttl, max_keys)
    if placement == "db":
        return SqlLedger(db, ttl)
    assert redis is not None and link is not None
    ledger = ReplicatedLedger(redis, link, ttl, max_keys)
    ledger.start()  # replays the log in the background; /readyz waits for it
    return ledger


def _file_store(settings: Settings, db: async_sessionmaker[AsyncSession]) -> FileStore:
    if settings.placement("files") == "disk":
        return DiskFiles(settings.data_dir / "files")
    url = settings.object_store_url or default_object_store_url(settings.data_dir)
    return ObjectFiles(Blobs(object_store(url)), db)


def _warn_development_secret(settings: Settings) -> None:
    if settings.development_secret:
        log.warning(
            "STATELAB_SECRET_KEY is not set: this process signs with a random development "
            "key that no other replica or worker (nor this one after a restart) can verify; "
            "give them all the same STATELAB_SECRET_KEY (make one with: %s)",
            MAKE_SECRET,
        )


@asynccontextmanager
async def open_stores(settings: Settings) -> AsyncIterator[Stores]:
    """Build the stores for the settings' placements; close their connections after.
    Logs a warning when the settings carry the per-process development secret."""
    _warn_development_secret(settings)
    keys = Keys.derive(settings.secret_key, settings.jwt_keys, settings.jwt_active_kid)
    engine = make_engine(settings.database_url)
    redis = make_redis(settings.redis_url) if settings.redis_url else None
    link = (
        RedisLink.from_url(
            settings.redis_url,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )
        if settings.redis_url
        else None
    )
    hasher = PasswordHasher(
        time_cost=settings.argon2_time_cost, memory_cost=settings.argon2_memory_kib, parallelism=1
    )
    db_sessions = sessionmaker(engine)
    jobs = open_jobs(settings)
    ledger = _ledger(settings, db_sessions, redis, link)
    try:
        yield Stores(
            settings=settings,
            keys=keys,
            engine=engine,
            redis=redis,
            link=link,
            users=UserStore(db_sessions, hasher),
            sessions=_session_store(settings, keys, link, engine),
            carts=_cart_store(settings, keys, link, engine),
            ledger=ledger,
            ratelimit=_rate_limiter(settings, link),
            chat=_chat_store(settings, redis, db_sessions),
            files=_file_store(settings, db_sessions),
            jobs=jobs,
            menu=_menu_store(settings, link, db_sessions),
            timers=_timers(settings, engine, ledger, jobs),
        )
    finally:
        await jobs.close()
        if isinstance(ledger, ReplicatedLedger):
            await ledger.close()
        if redis is not None:
            await redis.aclose()
        if link is not None:
            await link.aclose()
        await engine.dispose()
