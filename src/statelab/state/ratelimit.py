"""Rate-limit counters: per replica (``memory``) or shared (``redis``).

A fixed window per (scope, subject). With ``memory`` every replica counts alone,
so N replicas allow N times the limit — the lab measures that.
"""

from __future__ import annotations

import time
from typing import Protocol

from statelab.domain.errors import RateLimited
from statelab.state import keys
from statelab.state.errors import store_guard
from statelab.state.redislink import RedisLink


class RateLimiter(Protocol):
    name: str

    async def hit(self, scope: str, subject: str, limit: int, window: int) -> None:
        """Count one attempt; raise ``RateLimited`` when over the limit."""
        ...


def _refuse(scope: str, retry_after: int) -> RateLimited:
    return RateLimited(f"too many {scope} attempts; try again in {retry_after} s", retry_after)


class MemoryRateLimiter:
    name = "memory"

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}

    async def hit(self, scope: str, subject: str, limit: int, window: int) -> None:
        now = time.monotonic()
        started, count = self._windows.get((scope, subject), (now, 0))
        if now - started >= window:
            started, count = now, 0
        count += 1
        self._windows[(scope, subject)] = (started, count)
        if count > limit:
            raise _refuse(scope, int(window - (now - started)) + 1)
        if len(self._windows) > 100_000:  # bound memory: drop finished windows
            self._windows = {k: v for k, v in self._windows.items() if now - v[0] < window}


class RedisRateLimiter:
    name = "redis"

    def __init__(self, redis: RedisLink) -> None:
        self._redis = redis

    async def hit(self, scope: str, subject: str, limit: int, window: int) -> None:
        key = keys.rate(scope, subject)
        with store_guard("redis"):
            count, _, ttl = await self._redis.batch(
                [("INCR", key), ("EXPIRE", key, window, "NX"), ("TTL", key)], transaction=True
            )
        if int(count) > limit:
            raise _refuse(scope, int(ttl) if int(ttl) > 0 else window)
