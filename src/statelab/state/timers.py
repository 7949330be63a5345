"""Periodic work: the placements of the ``timers`` kind.

Time is cut into periods of ``timer_period_seconds``, numbered
``floor(unix time / period length)``, so every process agrees on them without
talking. At the start of each period the shop's periodic work runs once
(``PeriodicWork.run``):

- the sales summary: a row in ``sales_reports`` counting the orders paid during
  the period before, and their revenue, read from the SQL ``orders`` table (with
  ``ledger=memory`` the orders live in each replica instead and are not counted);
- the sweep of SQL sessions and carts past their expiry (``session=db``, ``cart=db``);
- the sweep of idempotency keys older than their TTL (the ledger's ``sweep``).

Placements:

- ``inprocess``: every replica runs its own loop and does the work itself. N
  replicas run it N times a period (N summary rows, one per replica id); a replica
  that is down runs nothing, and nobody runs what it missed.
- ``scheduler``: a period's work is one job of the job queue, keyed by the period
  and run by one ``statelab worker``. Every worker keeps the next period's job
  enqueued, scheduled at the period's start (``SchedulerTimers.keep_scheduled``):
  the queue ignores a key that is already waiting, so any number of workers make
  one job, and the schedule lives on while one worker does. A job whose worker
  dies mid-run is redelivered by the queue (at least once).

How ``scheduler`` gets each period's summary exactly once:

1. a period's job is only ever enqueued before the period starts, so no worker can
   add it again after it ran (the queue forgets a key once its job finished);
2. the summary row is unique per (period length, period, slot ``scheduler``): a
   second run of a period — a redelivery, or a worker whose clock is late
   enqueueing a period that has just run — writes nothing;
3. a run also writes the rows of the periods just before it that have none (up
   to ``CATCH_UP``): a period during which no worker was up gets its summary late
   rather than never.

Why not saq's cron jobs: a cron expression cannot say "every N seconds from the
epoch" for any N (the lab uses 2 s, a shop 60 s), and a cron run is not told which
period it is for, so a late run could not write the right period, nor could the
database refuse a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from statelab.db import models
from statelab.db.engine import READ_ONLY, upsert, writing
from statelab.state.cart import sweep_carts
from statelab.state.errors import store_guard
from statelab.state.jobs import QueueJobs
from statelab.state.ledger import SWEEP_BATCH, Ledger
from statelab.state.session import sweep_sessions

log = logging.getLogger(__name__)

#: The job name of a period's work in the queue (``statelab.jobs`` runs it).
TIMER_JOB = "timers"
#: The slot of the summary rows the scheduler writes: one per period.
SCHEDULER_SLOT = "scheduler"
#: Periods before the current one a scheduled run fills in when they have no row:
#: bounded, so the run after a long outage stays one short transaction.
CATCH_UP = 100
#: Longest wait between two enqueues of the next period's job by one worker.
SCHEDULE_EVERY = 1.0


@dataclass(frozen=True, slots=True)
class Period:
    """Period ``number`` of length ``seconds``: from ``number * seconds`` (unix time)."""

    number: int
    seconds: int

    @classmethod
    def at(cls, when: float, seconds: int) -> Period:
        return cls(int(when // seconds), seconds)

    @property
    def start(self) -> float:
        return float(self.number * self.seconds)

    @property
    def previous(self) -> Period:
        return Period(self.number - 1, self.seconds)

    @property
    def next(self) -> Period:
        return Period(self.number + 1, self.seconds)


@dataclass(frozen=True, slots=True)
class SalesReport:
    """One summary row: the orders paid in the period before ``period`` started."""

    period: int
    period_seconds: int
    ran_by: str
    orders: int
    revenue_cents: int
    created_at: float


def _utc(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


class PeriodicWork:
    """What runs once per period, and the summaries it wrote."""

    def __init__(
        self, engine: AsyncEngine, ledger: Ledger, clock: Callable[[], float] = time.time
    ) -> None:
        self._engine = engine
        self._ledger = ledger
        self._clock = clock

    async def run(self, period: Period, *, slot: str, ran_by: str, catch_up: bool) -> int:
        """The work of ``period``; returns how many summary rows this run wrote (0:
        the period had its row already). Raises if a part failed (after the others
        were tried): every part is safe to run again."""
        failures: list[Exception] = []
        written = 0
        try:
            written = await self._summaries(period, slot, ran_by, catch_up)
        except Exception as exc:
            failures.append(exc)
        for sweep in (self._sweep_sessions_and_carts, self._sweep_idempotency_keys):
            try:
                await sweep()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]
        return written

    async def reports(self, limit: int) -> list[SalesReport]:
        """The newest ``limit`` summary rows, newest period first."""
        row = models.SalesReport
        columns = (row.period, row.period_seconds, row.ran_by, row.orders, row.revenue_cents)
        with store_guard("database"):
            async with self._engine.connect() as conn:
                await conn.execution_options(**READ_ONLY)
                found = await conn.execute(
                    select(*columns, row.created_at)
                    .order_by(row.period.desc(), row.id.desc())
                    .limit(limit)
                )
                return [SalesReport(**r._asdict()) for r in found]

    async def _summaries(self, period: Period, slot: str, ran_by: str, catch_up: bool) -> int:
        with store_guard("database"):
            async with writing(self._engine) as conn:
                periods = [period]
                if catch_up:
                    periods = [*await self._missing(conn, period, slot), period]
                written = 0
                for p in periods:
                    written += await self._summary(conn, p, slot, ran_by)
        return written

    async def _missing(self, conn: AsyncConnection, period: Period, slot: str) -> list[Period]:
        """The periods just before ``period`` (at most ``CATCH_UP``) after the last one
        with a row of ``slot``; none before the first row ever written."""
        row = models.SalesReport
        last = await conn.scalar(
            select(func.max(row.period)).where(
                row.period_seconds == period.seconds, row.slot == slot, row.period < period.number
            )
        )
        if last is None:
            return []
        first = max(int(last) + 1, period.number - CATCH_UP)
        return [Period(n, period.seconds) for n in range(first, period.number)]

    async def _summary(self, conn: AsyncConnection, period: Period, slot: str, ran_by: str) -> int:
        """Write ``period``'s row (the orders of the period before it) unless it has one."""
        order, row = models.Order, models.SalesReport
        since, until = period.previous.start, period.start
        count, revenue = (
            await conn.execute(
                select(func.count(), func.coalesce(func.sum(order.total_cents), 0)).where(
                    order.created_at >= _utc(since), order.created_at < _utc(until)
                )
            )
        ).one()
        insert = upsert(conn.dialect, row).values(
            period_seconds=period.seconds,
            period=period.number,
            slot=slot,
            ran_by=ran_by,
            orders=int(count),
            revenue_cents=int(revenue),
            created_at=self._clock(),
        )
        written = await conn.scalar(
            insert.on_conflict_do_nothing(
                index_elements=[row.period_seconds, row.period, row.slot]
            ).returning(row.id)
        )
        return 0 if written is None else 1

    async def _sweep_sessions_and_carts(self) -> None:
        now = self._clock()
        sessions = await sweep_sessions(self._engine, now)
        carts = await sweep_carts(self._engine, now)
        if sessions or carts:
            log.info("swept %d expired session(s) and %d cart(s)", sessions, carts)

    async def _sweep_idempotency_keys(self) -> None:
        now_ms = int(self._clock() * 1000)
        swept = SWEEP_BATCH
        while swept >= SWEEP_BATCH:  # a backlog: batch after batch, each one short
            swept = await self._ledger.sweep(now_ms)


class Timers(Protocol):
    """Where the periodic work is started from."""

    name: str
    work: PeriodicWork

    def running(self) -> AbstractAsyncContextManager[None]:
        """What a replica runs in the background while it serves."""
        ...


class InProcessTimers:
    """Every replica runs the periodic work itself, at each period's start."""

    name = "inprocess"

    def __init__(self, work: PeriodicWork, seconds: int, replica_id: str) -> None:
        self.work = work
        self._seconds = seconds
        self._replica_id = replica_id

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._loop(), name="timers")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            due = Period.at(time.time(), self._seconds).next
            await asyncio.sleep(max(0.0, due.start - time.time()))
            await self.run(due)

    async def run(self, period: Period) -> None:
        """This replica's run of ``period``; a failure is logged and the loop goes on
        (nobody retries an in-process timer: the next period runs again)."""
        rid = self._replica_id
        try:
            await self.work.run(period, slot=rid, ran_by=rid, catch_up=False)
        except Exception:
            log.warning("periodic work of period %d failed", period.number, exc_info=True)


class SchedulerTimers:
    """The periodic work as one queued job per period, run by a worker."""

    name = "scheduler"

    def __init__(self, work: PeriodicWork, seconds: int, jobs: QueueJobs) -> None:
        self.work = work
        self._seconds = seconds
        self._jobs = jobs

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """A replica runs nothing: the workers keep the schedule."""
        yield

    async def schedule_next(self, now: float | None = None) -> Period:
        """Enqueue the next period's job, scheduled at its start (a no-op when it
        is already waiting)."""
        due = Period.at(time.time() if now is None else now, self._seconds).next
        payload = {"period": due.number, "seconds": due.seconds}
        key = f"{TIMER_JOB}:{due.seconds}:{due.number}"
        await self._jobs.enqueue(TIMER_JOB, payload, key=key, at=int(due.start))
        return due

    async def keep_scheduled(self) -> None:
        """A worker's part of the schedule, until cancelled: the next period's job
        enqueued at least every ``SCHEDULE_EVERY`` seconds (a quarter period if shorter)."""
        every = min(SCHEDULE_EVERY, self._seconds / 4)
        while True:
            try:
                await self.schedule_next()
            except Exception:
                log.warning("scheduling the next period failed; trying again", exc_info=True)
            await asyncio.sleep(every)

    async def run_job(self, payload: dict[str, Any], ran_by: str) -> int:
        """A worker's run of a period's job; returns the summary rows it wrote."""
        period = Period(int(payload["period"]), int(payload["seconds"]))
        return await self.work.run(period, slot=SCHEDULER_SLOT, ran_by=ran_by, catch_up=True)
