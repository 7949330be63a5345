"""The periodic work and its two placements (``timers=inprocess|scheduler``).

The work itself runs on SQLite and PostgreSQL: a summary of the period before,
once per period and slot; periods with no row filled in by a scheduled run; the
sweeps. Then the placements as they run: every replica's own loop (N rows a
period), and real ``statelab worker`` processes keeping one schedule in the job
queue (one row a period, while workers die and come back)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from statelab.cluster.servers import ManagedProcess
from statelab.config import ConfigError, build_settings
from statelab.db import models
from statelab.db.engine import make_engine, sessionmaker
from statelab.domain.shop import CartLimits
from statelab.state.cart import CartRef, SqlCarts
from statelab.state.jobs import JobPolicy, QueueJobs, make_saq_queue
from statelab.state.ledger import Idempotency, SqlLedger
from statelab.state.session import Lifetimes, SqlSessions
from statelab.state.timers import (
    CATCH_UP,
    SCHEDULER_SLOT,
    InProcessTimers,
    Period,
    PeriodicWork,
    SchedulerTimers,
)
from tests.files.support import eventually, worker_process

S = 60  # period length of the store tests


@pytest.fixture
async def db(sql_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(sql_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _order(db: AsyncEngine, cents: int, at: float) -> None:
    async with sessionmaker(db)() as session, session.begin():
        user = await session.scalar(select(models.User).where(models.User.username == "buyer"))
        if user is None:
            user = models.User(username="buyer", password_hash="-")
            session.add(user)
            await session.flush()
        session.add(
            models.Order(
                user_id=user.id,
                status="paid",
                total_cents=cents,
                items=[],
                created_at=datetime.fromtimestamp(at, UTC),
            )
        )


async def _rows(db: AsyncEngine) -> list[tuple[int, str, int, int]]:
    r = models.SalesReport
    async with db.connect() as conn:
        found = await conn.execute(
            select(r.period, r.slot, r.orders, r.revenue_cents).order_by(r.period, r.slot)
        )
        return [(int(p), str(s), int(o), int(c)) for p, s, o, c in found]


def _work(db: AsyncEngine, now: float = 0.0) -> PeriodicWork:
    ledger = SqlLedger(sessionmaker(db), key_ttl_seconds=60)
    return PeriodicWork(db, ledger, clock=lambda: now or time.time())


async def test_a_period_summarises_the_period_before_once_per_slot(
    db: AsyncEngine,
) -> None:
    p = Period.at(time.time(), S)
    await _order(db, 900, p.previous.start)  # the first instant of the period before
    await _order(db, 550, p.start - 0.5)
    await _order(db, 10_000, p.start)  # already the period's own: the next run counts it
    await _order(db, 20_000, p.previous.start - 0.001)
    work = _work(db)
    assert await work.run(p, slot="r1", ran_by="r1", catch_up=False) == 1
    assert await work.run(p, slot="r2", ran_by="r2", catch_up=False) == 1
    assert await work.run(p, slot="r1", ran_by="r1", catch_up=False) == 0  # again: nothing
    assert await _rows(db) == [(p.number, "r1", 2, 1450), (p.number, "r2", 2, 1450)]
    reports = await work.reports(10)
    assert {(r.period, r.ran_by, r.period_seconds) for r in reports} == {
        (p.number, "r1", S),
        (p.number, "r2", S),
    }


async def test_a_scheduled_run_fills_in_the_periods_with_no_row(
    db: AsyncEngine,
) -> None:
    work = _work(db)
    first = Period(1000, S)
    assert await work.run(first, slot=SCHEDULER_SLOT, ran_by="w1", catch_up=True) == 1
    # Nobody ran 1001 and 1002 (no worker was up): the run of 1003 writes them too.
    assert await work.run(Period(1003, S), slot=SCHEDULER_SLOT, ran_by="w2", catch_up=True) == 3
    # A late run of a period that was filled in writes nothing.
    assert await work.run(Period(1002, S), slot=SCHEDULER_SLOT, ran_by="w1", catch_up=True) == 0
    # A long outage: only the last CATCH_UP periods are filled in.
    gap = Period(1003 + 5 * CATCH_UP, S)
    assert await work.run(gap, slot=SCHEDULER_SLOT, ran_by="w1", catch_up=True) == CATCH_UP + 1
    periods = [p for p, *_ in await _rows(db)]
    assert periods == [1000, 1001, 1002, 1003, *range(gap.number - CATCH_UP, gap.number + 1)]


async def test_the_work_sweeps_expired_sessions_carts_and_keys(
    db: AsyncEngine,
) -> None:
    past = time.time() - 10_000
    sessions = SqlSessions(db, Lifetimes(idle=60, absolute=600), clock=lambda: past)
    carts = SqlCarts(db, CartLimits(5, 5), ttl=60, clock=lambda: past)
    ledger = SqlLedger(sessionmaker(db), key_ttl_seconds=60)
    user = await _make_user(db)
    await sessions.issue(user, "old", "")
    await carts.add(CartRef("u:1"), {1: 1})
    await ledger.top_up(user, 100, Idempotency("old-key", "f"))
    await PeriodicWork(db, ledger, clock=lambda: time.time() + 120).run(
        Period.at(time.time(), S), slot="r1", ran_by="r1", catch_up=False
    )
    async with db.connect() as conn:
        for table in (models.LoginSession, models.Cart, models.IdempotencyKey):
            assert await conn.scalar(select(func.count()).select_from(table)) == 0, table


async def _make_user(db: AsyncEngine) -> int:
    async with sessionmaker(db)() as session, session.begin():
        user = models.User(username="sweepme", password_hash="-")
        session.add(user)
        await session.flush()
        return user.id


# ---------------------------------------------------------------------- in-process


async def test_every_replica_runs_its_own_timer(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        replicas = [InProcessTimers(_work(engine), 1, rid) for rid in ("r1", "r2", "r3")]
        async with replicas[0].running(), replicas[1].running(), replicas[2].running():
            await asyncio.sleep(3.3)
        rows = await _rows(engine)
    finally:
        await engine.dispose()
    per_period = Counter(p for p, *_ in rows)
    between = sorted(per_period)[1:-1]  # the last one may have been cut short
    assert between and all(per_period[p] == 3 for p in between)  # three replicas, three runs
    assert {slot for _, slot, *_ in rows} == {"r1", "r2", "r3"}


# ----------------------------------------------------------------------- scheduler


async def test_workers_enqueue_the_next_period_once(redis_url: str, sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    queue = make_saq_queue(redis_url)
    jobs = QueueJobs(queue, JobPolicy(heartbeat=5, timeout=30))
    try:
        timers = [SchedulerTimers(_work(engine), S, jobs) for _ in range(3)]
        now = time.time()
        due = {(await t.schedule_next(now)).number for t in timers for _ in range(2)}
        assert due == {Period.at(now, S).number + 1}
        assert await queue.count("incomplete") == 1  # six enqueues, one job
    finally:
        await jobs.close()
        await engine.dispose()


def _scheduler_rows(database_url: str) -> list[tuple[int, str]]:
    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
        found = conn.execute("SELECT period, ran_by FROM sales_reports ORDER BY period, id")
        return [(int(p), str(w)) for p, w in found]


async def test_one_run_per_period_while_workers_die_and_come_back(
    tmp_path: Path, redis_url: str, sqlite_url: str
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    period = {"STATELAB_TIMER_PERIOD_SECONDS": "1"}

    def worker(name: str) -> ManagedProcess:
        return worker_process(run_dir, name, redis_url, sqlite_url, **period)

    async def rows_after(period_number: int) -> bool:
        return any(p > period_number for p, _ in _scheduler_rows(sqlite_url))

    w1, w2, w3 = worker("w1"), worker("w2"), worker("w3")
    with w1, w2:
        await eventually(lambda: rows_after(0), timeout=30)
        await asyncio.sleep(2.5)
        w1.kill(signal.SIGKILL)
        killed_at = Period.at(time.time(), 1).number
        await eventually(lambda: rows_after(killed_at + 2), timeout=15)
        w2.kill(signal.SIGKILL)
    gap_from = Period.at(time.time(), 1).number
    await asyncio.sleep(2.5)  # no worker at all for two periods and more
    with w3:
        await eventually(lambda: rows_after(gap_from + 4), timeout=30)
    rows = _scheduler_rows(sqlite_url)
    periods = [p for p, _ in rows]
    assert periods == list(range(periods[0], periods[-1] + 1)), "one row a period, none missing"
    ran_by = {w for _, w in rows}
    assert "w3" in ran_by and ran_by <= {"w1", "w2", "w3"}


def test_a_scheduler_needs_the_queue(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--place timers=scheduler needs jobs=queue"):
        build_settings(profile="stateful", place={"timers": "scheduler"}, redis_url="redis://x:1")
    # A profile's scheduler gives way when an override leaves no worker to run it.
    settings = build_settings(
        profile="stateless", place={"jobs": "inprocess"}, redis_url="redis://x:1"
    )
    assert settings.placement("timers") == "inprocess"
    assert build_settings(profile="token", redis_url="redis://x:1").placement("timers") == (
        "scheduler"
    )
