"""Shop apps for the web tests: real FastAPI apps over real Redis and SQL.

``shop`` builds replicas (apps with their own lifespan and stores) and clients;
replicas built in one test share the database and Redis, like one deployment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from statelab.config import build_settings
from statelab.web.app import create_app

SECRET = "web-tests-fd6c19410d89cb188302138e1050ded70c9a9191826655a9794767adea83d783"


class Shop:
    """Builds replicas of one deployment and clients (devices) talking to them."""

    def __init__(self, stack: AsyncExitStack, base: dict[str, Any]) -> None:
        self._stack = stack
        self._base = base
        self._apps: dict[int, tuple[httpx.ASGITransport, str]] = {}

    async def __call__(self, profile: str = "stateless", **overrides: Any) -> httpx.AsyncClient:
        """A new replica with these settings, and a client talking to it."""
        scheme = overrides.pop("scheme", "http")
        app = create_app(build_settings(**{**self._base, "profile": profile, **overrides}))
        await self._stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        client = await self._client(transport, f"{scheme}://testserver")
        self._apps[id(client)] = (transport, f"{scheme}://testserver")
        return client

    async def device(self, client: httpx.AsyncClient) -> httpx.AsyncClient:
        """Another client, with no cookies, of the same replica as ``client``."""
        transport, base_url = self._apps[id(client)]
        return await self._client(transport, base_url)

    async def _client(self, transport: httpx.ASGITransport, base_url: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=transport, base_url=base_url)
        return await self._stack.enter_async_context(client)


ShopFactory = Shop


@pytest.fixture
async def shop(tmp_path: Path, sqlite_url: str, redis_url: str) -> AsyncIterator[Shop]:
    """``await shop(profile, replica_id="r2", **settings)`` -> a client of a new replica."""
    base = {
        "replica_id": "r1",
        "redis_url": redis_url,
        "database_url": sqlite_url,
        "secret_key": SECRET,
        "data_dir": tmp_path / "data",
        "argon2_time_cost": 1,
        "argon2_memory_kib": 1024,
    }
    async with AsyncExitStack() as stack:
        yield Shop(stack, base)
