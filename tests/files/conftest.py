"""Fixtures for the upload tests: a deployment of in-process replicas sharing Redis,
SQLite and an object-store folder, and a real S3-compatible server (moto)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from statelab.cluster.servers import ManagedProcess, free_port
from tests.files.support import Deployment, sqlite_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database (migrations run outside the event loop)."""
    return sqlite_database(tmp_path / "db")


@pytest.fixture
async def deployment(tmp_path: Path, redis_url: str, sqlite_url: str) -> AsyncIterator[Deployment]:
    """``await deployment.replica("r1", profile, **settings)`` -> a client of a new replica."""
    async with AsyncExitStack() as stack:
        yield Deployment(stack, tmp_path, redis_url, sqlite_url)


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    """moto's S3 server on a free loopback port, stopped by PID after the test."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/moto-api/", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with ManagedProcess("moto", tmp_path / "moto", argv, ready=ready) as server:
        server.wait_ready(30)
        yield url
