"""The async SQLAlchemy engine for a plain database URL, tuned per backend."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Dialect, Engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

from statelab.config import database_url_async


def make_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An engine for ``sqlite:///PATH`` or ``postgresql://...`` with the async driver."""
    url = database_url_async(database_url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_timeout=5
    )


_READ_ONLY_OPTION = "statelab_read_only"

#: Execution options for a session that only reads, each statement on its own (the
#: request path's session and cart lookups): on SQLite it takes no write lock, so
#: reads run beside the writer (WAL) instead of queueing for the lock; elsewhere it
#: changes nothing. Give them at its start: ``await db.connection(execution_options=...)``.
READ_ONLY: dict[str, Any] = {_READ_ONLY_OPTION: True}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; NORMAL sync is durable against a
    # process crash (the failure the lab injects), busy_timeout waits for the lock.
    # Let SQLAlchemy issue BEGIN itself (see _sqlite_begin_immediate).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # Take the write lock at BEGIN: two replicas reading a balance and then both
    # upgrading to write would otherwise deadlock into SQLITE_BUSY. A connection
    # that only reads (``READ_ONLY``) begins nothing: each statement stands alone.
    if conn.get_execution_options().get(_READ_ONLY_OPTION):
        return
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class StatementCount:
    """How many SQL statements an engine has sent: the lab's store round trips."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.value = 0
        event.listen(engine.sync_engine, "before_cursor_execute", self._count)

    def _count(self, *_: Any) -> None:
        self.value += 1


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def upsert(dialect: Dialect, table: Any) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``table`` that takes ``ON CONFLICT`` clauses, in the construct of
    ``dialect`` (a connection's): both databases speak it, each through its own."""
    if dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


#: One queue of writers per SQLite engine of this process (see ``writing``).
_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def writing(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A write transaction (Core), committed at the end of the block.

    SQLite lets one writer at a time hold the database, and one that finds it taken
    polls in sleeps of up to 100 ms: under load the unlucky wait for seconds. So the
    writers of this process first queue here, in the event loop, where the next one
    starts the moment the last one commits; only writers of other processes still
    meet SQLite's polling. PostgreSQL locks rows, not the database: no queue."""
    if engine.dialect.name != "sqlite":
        async with engine.begin() as conn:
            yield conn
        return
    lock = _SQLITE_WRITERS.setdefault(engine.sync_engine, asyncio.Lock())
    async with lock, engine.begin() as conn:
        yield conn
