"""Schema migrations with Alembic, driven from code (no alembic.ini to find)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from statelab.db.engine import make_engine


class NotMigrated(RuntimeError):
    """The database schema is missing or older than this code."""


def _config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    cfg.attributes["database_url"] = database_url
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config("")).get_current_head()
    assert head is not None
    return head


def _ensure_sqlite_folder(database_url: str) -> None:
    if database_url.startswith("sqlite:///"):
        path = Path(database_url.removeprefix("sqlite:///"))
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)


def upgrade(database_url: str, revision: str = "head") -> str:
    """Bring the schema to ``revision`` (the newest by default); returns it."""
    _ensure_sqlite_folder(database_url)
    command.upgrade(_config(database_url), revision)
    return head_revision() if revision == "head" else revision


async def current_revision(database_url: str) -> str | None:
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_read_revision)
    finally:
        await engine.dispose()


def _read_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def check_migrated(database_url: str) -> None:
    """Refuse an unmigrated or outdated schema with the command that fixes it."""
    current, head = await current_revision(database_url), head_revision()
    if current != head:
        state = "has no schema" if current is None else f"is at revision {current}"
        raise NotMigrated(
            f"the database {database_url} {state}, this code needs {head}: "
            f"run `statelab migrate --database-url {database_url}`"
        )


def check_migrated_sync(database_url: str) -> None:
    asyncio.run(check_migrated(database_url))
