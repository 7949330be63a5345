"""``GET /api/admin/reports``: the periodic sales summaries, for admins only, as the
replicas' own timers write them (``timers=inprocess``, one row per replica a period)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from statelab.db.engine import make_engine, sessionmaker
from statelab.state.users import set_admin
from tests.support import register_and_login
from tests.web.conftest import Shop

TIMERS: dict[str, Any] = {"place": {"timers": "inprocess"}, "timer_period_seconds": 1}


async def _grant(database_url: str, username: str) -> None:
    engine = make_engine(database_url)
    try:
        await set_admin(sessionmaker(engine), username, admin=True)
    finally:
        await engine.dispose()


async def test_admins_read_every_replicas_summaries(shop: Shop, sqlite_url: str) -> None:
    r1 = await shop(**TIMERS)
    await shop(**TIMERS, replica_id="r2")
    assert (await r1.get("/api/admin/reports")).status_code == 401
    headers = await register_and_login(r1, "boss")
    refused = await r1.get("/api/admin/reports", headers=headers)
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    await _grant(sqlite_url, "boss")
    r = await r1.post("/api/cart/items", json={"item_id": 1, "quantity": 1}, headers=headers)
    assert r.status_code == 200
    await asyncio.sleep(3.3)  # three period starts at least

    answer = await r1.get("/api/admin/reports", headers=headers)
    assert answer.status_code == 200
    reports = answer.json()["reports"]
    per_period = Counter(row["period"] for row in reports)
    # The first period may have begun between the two replicas' starts, and the last
    # may still be running: every one in between got a row from each replica.
    between = sorted(per_period)[1:-1]
    assert between and all(per_period[p] == 2 for p in between)
    assert {row["ran_by"] for row in reports} == {"r1", "r2"}
    newest = reports[0]
    assert newest["period"] == max(per_period)
    assert newest["period_seconds"] == 1
    assert newest["orders"] == 0 and newest["revenue_cents"] == 0
    assert abs(newest["created_at"] - time.time()) < 5
    limited = await r1.get("/api/admin/reports?limit=1", headers=headers)
    assert len(limited.json()["reports"]) == 1
    for bad in ("0", "1001", "x"):
        r = await r1.get(f"/api/admin/reports?limit={bad}", headers=headers)
        assert r.status_code == 422
