"""Accounts (username and argon2 password hash) and the admin role: always in SQL,
in every profile.

The admin role is granted and revoked only by ``statelab admin grant|revoke``
(``change_role``), never through the shop. Admin routes read it from SQL on every
request (``UserStore.is_admin``), so a revocation holds from the next request on,
whatever the session placement: no session or token carries the role.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from statelab.db import models
from statelab.db.engine import make_engine, sessionmaker
from statelab.domain.errors import AlreadyExists, InvalidInput, NotFound
from statelab.state.errors import store_guard

USERNAME = re.compile(r"^[a-z0-9_.-]{3,40}$")
MIN_PASSWORD, MAX_PASSWORD = 8, 200


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str


def check_credentials_shape(username: str, password: str) -> str:
    """Normalise the username and check both against the rules; returns the username."""
    name = username.strip().lower()
    if not USERNAME.match(name):
        raise InvalidInput("username must be 3-40 characters: a-z, 0-9, '_', '.', '-'")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidInput(f"password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters")
    return name


class UserStore:
    """Registration and password checks. Hashing runs in a thread: argon2 is
    deliberately slow and would otherwise stall every request on the replica."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], hasher: PasswordHasher) -> None:
        self._sessions = sessions
        self._hasher = hasher
        self._dummy_hash = hasher.hash("statelab-timing-equaliser")

    async def register(self, username: str, password: str) -> User:
        name = check_credentials_shape(username, password)
        password_hash = await asyncio.to_thread(self._hasher.hash, password)
        try:
            with store_guard("database"):
                async with self._sessions() as db, db.begin():
                    row = models.User(username=name, password_hash=password_hash)
                    db.add(row)
                    await db.flush()
                    return User(row.id, row.username)
        except IntegrityError as exc:
            raise AlreadyExists(f"username {name!r} is taken") from exc

    async def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password matches; the same work is done for unknown names."""
        name = username.strip().lower()
        with store_guard("database"):
            async with self._sessions() as db:
                row = await db.scalar(select(models.User).where(models.User.username == name))
        stored = row.password_hash if row is not None else self._dummy_hash
        try:
            await asyncio.to_thread(self._hasher.verify, stored, password)
        except (VerificationError, InvalidHashError):
            return None
        return User(row.id, row.username) if row is not None else None

    async def get(self, user_id: int) -> User | None:
        with store_guard("database"):
            async with self._sessions() as db:
                row = await db.get(models.User, user_id)
        return User(row.id, row.username) if row is not None else None

    async def is_admin(self, user_id: int) -> bool:
        """Whether the user holds the admin role now (one indexed read)."""
        with store_guard("database"):
            async with self._sessions() as db:
                found = await db.scalar(
                    select(models.User.is_admin).where(models.User.id == user_id)
                )
        return bool(found)


async def set_admin(
    sessions: async_sessionmaker[AsyncSession], username: str, *, admin: bool
) -> User:
    """Grant (``admin=True``) or revoke the admin role of an account by its name."""
    name = username.strip().lower()
    change = (
        update(models.User)
        .where(models.User.username == name)
        .values(is_admin=admin)
        .returning(models.User.id, models.User.username)
    )
    with store_guard("database"):
        async with sessions() as db, db.begin():
            row = (await db.execute(change)).first()
    if row is None:
        raise NotFound(f"no account is named {name!r}")
    return User(row.id, row.username)


async def change_role(database_url: str, username: str, *, admin: bool) -> User:
    """``statelab admin grant|revoke``: set the role in the database at ``database_url``."""
    engine = make_engine(database_url, pool_size=1)
    try:
        return await set_admin(sessionmaker(engine), username, admin=admin)
    finally:
        await engine.dispose()
