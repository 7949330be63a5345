"""Copies of the replicated ledger for the tests and the measuring script: each with
clients of its own, as in a replica of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from statelab.state import make_redis
from statelab.state.redislink import RedisLink
from statelab.state.replicated_ledger import ReplicatedLedger


@asynccontextmanager
async def replicated_copy(
    url: str, ttl: float, max_keys: int, *, wait: float = 5.0, wait_replicas: int = 0
) -> AsyncIterator[ReplicatedLedger]:
    """A copy following the log on the Redis at ``url`` (started: it replays first);
    with ``wait_replicas``, its appends WAIT for that many Redis replicas (50 ms)."""
    client = make_redis(url)
    link = RedisLink.from_url(url, wait_replicas=wait_replicas, wait_timeout_ms=50)
    ledger = ReplicatedLedger(client, link, ttl, max_keys, wait_seconds=wait)
    ledger.start()
    try:
        yield ledger
    finally:
        await ledger.close()
        await link.aclose()
        await client.aclose()
