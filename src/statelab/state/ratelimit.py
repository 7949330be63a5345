"""Rate-limit counters: per replica (``memory``) or shared (``redis``).

A fixed window per (scope, subject). With ``memory`` every replica counts alone,
so N replicas allow N times the limit — the lab measures that.

Memory windows are bounded: finished windows are dropped as new ones start, and at
most ``max_windows`` are held. A flood of distinct subjects (addresses, account
names) past that bound pushes out the windows nearest their end first, so such a
subject's count starts afresh early. That is the price of a bounded replica; the
``redis`` placement keeps every window until its TTL.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
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
    """Counters in this replica's memory, bounded (see the module docstring)."""

    name = "memory"

    def __init__(self, max_windows: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_windows
        self._clock = clock
        # Per window length, (scope, subject) -> (start, count) with the earliest
        # start first: the front of each is the first of its length to finish.
        self._by_length: dict[int, OrderedDict[tuple[str, str], tuple[float, int]]] = {}

    def __len__(self) -> int:
        return sum(len(windows) for windows in self._by_length.values())

    async def hit(self, scope: str, subject: str, limit: int, window: int) -> None:
        now, key = self._clock(), (scope, subject)
        windows = self._by_length.setdefault(window, OrderedDict())
        started, count = windows.get(key, (now, 0))
        if key not in windows or now - started >= window:
            windows.pop(key, None)
            self._make_room(now)
            started, count = now, 0
        count += 1
        windows[key] = (started, count)
        if count > limit:
            raise _refuse(scope, int(window - (now - started)) + 1)

    def _make_room(self, now: float) -> None:
        """Drop finished windows; if still full, the one nearest its end."""
        for length, windows in self._by_length.items():
            while windows and now - next(iter(windows.values()))[0] >= length:
                windows.popitem(last=False)
        if len(self) < self._max:
            return
        fronts = [
            (next(iter(w.values()))[0] + length, w) for length, w in self._by_length.items() if w
        ]
        min(fronts, key=lambda front: front[0])[1].popitem(last=False)


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
