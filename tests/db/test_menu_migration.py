"""Revision 0004 (the menu in SQL, the admin role) on SQLite and PostgreSQL, over a
database that already holds accounts; and the models match what the migrations build."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from statelab.db.engine import make_engine
from statelab.db.migrate import upgrade
from statelab.db.models import Base
from statelab.domain.shop import load_menu


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shop.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def _query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(sql), params)
            return [tuple(row) for row in result.all()] if result.returns_rows else []
    finally:
        await engine.dispose()


def test_0004_seeds_the_menu_and_makes_no_one_admin(database_url: str) -> None:
    upgrade(database_url, "0003")
    asyncio.run(
        _query(database_url, "INSERT INTO users (username, password_hash) VALUES ('old', '-')")
    )
    # Rows that refer to the account: the column is added in place, not by a table copy.
    asyncio.run(_query(database_url, "INSERT INTO accounts VALUES (1, 500)"))
    upgrade(database_url, "0004")
    assert asyncio.run(_query(database_url, "SELECT username, is_admin FROM users")) == [
        ("old", False)
    ]
    menu = asyncio.run(
        _query(database_url, "SELECT id, name, kind, price_cents, version FROM menu_items")
    )
    seed = [(i.id, i.name, i.kind, i.price_cents, 1) for i in load_menu().items]
    assert sorted(menu) == seed

    upgrade(database_url, "0003")  # and back: the downgrade runs too
    assert asyncio.run(_query(database_url, "SELECT username FROM users")) == [("old",)]


def _differences(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def _drift(url: str) -> list[Any]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_differences)
    finally:
        await engine.dispose()


def test_the_models_match_the_migrated_schema(database_url: str) -> None:
    upgrade(database_url)
    assert asyncio.run(_drift(database_url)) == []
