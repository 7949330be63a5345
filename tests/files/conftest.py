"""Fixtures for the upload tests: a deployment of in-process replicas sharing Redis,
SQLite and an object-store folder, and a real S3-compatible server (moto)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from statelab.cluster.servers import PortedProcess
from tests.files.support import Deployment
from tests.support import answers_ok


@pytest.fixture
async def deployment(tmp_path: Path, redis_url: str, sqlite_url: str) -> AsyncIterator[Deployment]:
    """``await deployment.replica("r1", profile, **settings)`` -> a client of a new replica."""
    async with AsyncExitStack() as stack:
        yield Deployment(stack, tmp_path, redis_url, sqlite_url)


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    """moto's S3 server on a loopback port of its own, stopped by PID after the test."""
    server = PortedProcess(
        "moto",
        tmp_path / "moto",
        lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        ready=lambda port: answers_ok(f"http://127.0.0.1:{port}/moto-api/"),
    )
    server.start()
    try:
        server.wait_ready(30)
        yield f"http://{server.address}"
    finally:
        server.stop()
