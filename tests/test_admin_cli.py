"""``statelab admin grant|revoke``: the only way to the admin role."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from statelab.cli import app
from statelab.db import models
from statelab.db.engine import make_engine, sessionmaker
from tests.support import sqlite_database

runner = CliRunner()


async def _roles(url: str) -> dict[str, bool]:
    engine = make_engine(url)
    try:
        async with sessionmaker(engine)() as db:
            rows = (await db.execute(select(models.User.username, models.User.is_admin))).all()
        return {name: admin for name, admin in rows}
    finally:
        await engine.dispose()


async def _add_user(url: str, name: str) -> None:
    engine = make_engine(url)
    try:
        async with sessionmaker(engine)() as db, db.begin():
            db.add(models.User(username=name, password_hash="-"))
    finally:
        await engine.dispose()


def test_grant_and_revoke_set_the_role_of_one_account(tmp_path: Path) -> None:
    url = sqlite_database(tmp_path)
    for name in ("olga", "pete"):
        asyncio.run(_add_user(url, name))
    assert asyncio.run(_roles(url)) == {"olga": False, "pete": False}, "nobody is born admin"

    granted = runner.invoke(app, ["admin", "grant", "Olga", "--database-url", url])
    assert granted.exit_code == 0, granted.output
    assert "olga is now an admin" in granted.output
    assert asyncio.run(_roles(url)) == {"olga": True, "pete": False}

    revoked = runner.invoke(app, ["admin", "revoke", "olga", "--database-url", url])
    assert revoked.exit_code == 0, revoked.output
    assert asyncio.run(_roles(url)) == {"olga": False, "pete": False}


def test_an_unknown_account_or_an_unmigrated_database_fails_with_one_line(
    tmp_path: Path,
) -> None:
    url = sqlite_database(tmp_path / "a")
    unknown = runner.invoke(app, ["admin", "grant", "nobody", "--database-url", url])
    assert unknown.exit_code == 2
    assert "no account is named 'nobody'" in unknown.output
    bare = f"sqlite:///{tmp_path / 'bare.db'}"
    unmigrated = runner.invoke(app, ["admin", "grant", "olga", "--database-url", bare])
    assert unmigrated.exit_code == 2
    assert "run `statelab migrate --database-url" in unmigrated.output
