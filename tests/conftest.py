"""Shared fixtures: one real Redis and one real PostgreSQL per test session.

The servers are started from their binaries in a temporary folder and stopped by
PID at the end of the session. Each test gets a flushed Redis (``redis_url``) or
a database of its own (``postgres_url``; ``sqlite_url`` is a migrated SQLite file).
A server that cannot start fails the tests that need it, with the reason; it never
skips them.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import redis
from statelab.cluster.servers import PostgresServer, RedisServer
from statelab.db.migrate import upgrade
from tests.support import sqlite_database

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` for the whole session (AOF on, loopback, free port)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    with server:
        yield server


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster for the whole session (fsync off: tests only)."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"), fsync=False)
    with server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session Redis, emptied for this test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    yield redis_server.url


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database for this test (plain ``postgresql://`` URL)."""
    return postgres_server.create_database(f"test_{next(_databases)}")


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test: bound by us and
    never listening, so no other process can start listening there meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database of this test's own (migrated outside the event loop)."""
    return sqlite_database(tmp_path / "db")


@pytest.fixture(params=["sqlite", "postgres"])
def sql_url(request: pytest.FixtureRequest) -> str:
    """A migrated database of this test's own, once on SQLite and once on PostgreSQL
    (migrated outside the event loop: Alembic runs its own)."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
        return url
    url = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url
