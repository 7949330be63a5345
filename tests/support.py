"""Helpers shared by the test packages and their measurement scripts: accounts,
unique user names, migrated SQLite files, what replica processes are given, and a
listener to take a port away from a server.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from statelab.db.migrate import upgrade

PASSWORD = "correct horse battery"

#: Settings every test process gets, whatever its secret: cheap password hashing,
#: no drain pause, a short graceful stop, and login and registration limits no test reaches.
PROCESS_ENV = {
    "STATELAB_ARGON2_TIME_COST": "1",
    "STATELAB_ARGON2_MEMORY_KIB": "1024",
    "STATELAB_DRAIN_SECONDS": "0",
    "STATELAB_GRACEFUL_TIMEOUT_SECONDS": "5",
    "STATELAB_LOGIN_LIMIT_PER_ADDRESS": "100000",
    "STATELAB_LOGIN_LIMIT_PER_ACCOUNT": "100000",
    "STATELAB_REGISTER_LIMIT_PER_ADDRESS": "100000",
}

_names = itertools.count(1)


def unique(prefix: str) -> str:
    """A username nobody else in this run has."""
    return f"{prefix}{os.getpid() % 10000}x{next(_names)}"


def sqlite_database(folder: Path) -> str:
    """A migrated SQLite file in ``folder`` (call it outside an event loop: Alembic
    runs its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder / 'shop.db'}"
    upgrade(url)
    return url


@contextmanager
def listening(port: int) -> Iterator[socket.socket]:
    """Someone else's listener on loopback ``port``, for as long as this lasts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock


def answers_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether a GET of ``url`` answers 200; False while nothing listens there."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


async def register_and_login(
    client: httpx.AsyncClient, username: str = "alice", password: str = PASSWORD
) -> dict[str, str]:
    """Register (if needed) and log in; returns the headers for authenticated writes."""
    r = await client.post("/api/auth/register", json={"username": username, "password": password})
    assert r.status_code in (201, 409), r.text
    return await login(client, username, password)


async def login(
    client: httpx.AsyncClient, username: str = "alice", password: str = PASSWORD
) -> dict[str, str]:
    """Log in; returns the bearer header (token profile) or the CSRF header (cookies)."""
    r = await client.post("/api/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    body = r.json()
    if "access_token" in body:
        return {"Authorization": f"Bearer {body['access_token']}"}
    return {"X-CSRF-Token": body["csrf_token"]}


def share_login(source: httpx.AsyncClient, target: httpx.AsyncClient) -> None:
    """Carry the cookies to another replica, as a load balancer would."""
    for cookie in source.cookies.jar:
        target.cookies.set(cookie.name, cookie.value)
