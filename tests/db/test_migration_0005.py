"""Revision 0005 (SQL sessions and carts, sales reports) on SQLite and PostgreSQL:
it builds exactly the tables the models describe, keeps existing rows, and goes
back down cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from statelab.db.engine import make_engine
from statelab.db.migrate import _config, current_revision, upgrade
from statelab.db.models import Base

TABLES = {"sessions", "carts", "cart_lines", "sales_reports"}


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shop.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def _differences(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return [d for d in compare_metadata(context, Base.metadata) if _touches(d, TABLES)]


def _touches(diff: Any, tables: set[str]) -> bool:
    """Whether an autogenerate difference (a tuple, or a list of them for a changed
    column) names one of ``tables``: as a string, a table, or what a table holds."""
    for part in diff[0] if isinstance(diff, list) else diff:
        table = getattr(part, "table", part)
        name = table if isinstance(table, str) else getattr(table, "name", None)
        if name in tables:
            return True
    return False


async def _inspect(url: str) -> tuple[list[Any], set[str], int]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(_differences)
            names = await conn.run_sync(lambda c: set(c.dialect.get_table_names(c)))
            users = (await conn.execute(text("SELECT count(*) FROM users"))).scalar_one()
        return differences, names, int(users)
    finally:
        await engine.dispose()


async def _add_user(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO users (username, password_hash) VALUES ('x', '-')")
            )
    finally:
        await engine.dispose()


def test_0005_builds_the_modelled_tables_and_goes_back_down(database_url: str) -> None:
    upgrade(database_url, "0004")
    asyncio.run(_add_user(database_url))
    assert upgrade(database_url) == "0005"
    differences, tables, users = asyncio.run(_inspect(database_url))
    assert differences == []
    assert tables >= TABLES
    assert users == 1

    command.downgrade(_config(database_url), "0004")
    assert asyncio.run(current_revision(database_url)) == "0004"
    _, tables, users = asyncio.run(_inspect(database_url))
    assert not TABLES & tables and users == 1
    assert upgrade(database_url) == "0005"
