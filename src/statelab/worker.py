"""The queue worker (``statelab worker``) of the background jobs in ``statelab.jobs``.

``run_worker`` is the worker process: it serves the saq queue until SIGTERM or
SIGINT, then stops taking jobs, lets running ones finish for the graceful
timeout and re-queues the rest. With ``timers=scheduler`` it also keeps the next
period's ``timers`` job enqueued, as every worker does (one job results). It logs
to stderr and announces readiness with the log line ``worker <id> ready`` and the
Redis key ``keys.worker_alive(id)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from saq import Worker
from saq.job import Job
from saq.types import Context

from statelab.config import ConfigError, Settings
from statelab.db.migrate import check_migrated_sync
from statelab.jobs import perform_job
from statelab.state import Stores, keys, open_stores
from statelab.state.errors import store_guard
from statelab.state.jobs import QUEUE_FUNCTION, JobPolicy, QueueJobs
from statelab.state.redisclient import RedisClient
from statelab.state.timers import SchedulerTimers

log = logging.getLogger(__name__)


async def _beat(job: Job, every: float) -> None:
    """Refresh the job's heartbeat while it runs: a silent job is taken for dead."""
    while True:
        await asyncio.sleep(every)
        try:
            await job.update()
        except Exception:  # a missed beat is retried next period; the sweep is lenient
            log.warning("heartbeat of job %s failed", job.key, exc_info=True)


def _queued_runner(stores: Stores, policy: JobPolicy) -> Callable[..., Awaitable[bool]]:
    async def perform(ctx: Context, *, job: str, payload: dict[str, Any]) -> bool:
        saq_job = ctx.get("job")
        beat = asyncio.create_task(_beat(saq_job, policy.beat_every)) if saq_job else None
        try:
            if saq_job is not None:
                log.info("job %s attempt %d (key %s)", job, saq_job.attempts, saq_job.key)
            return await perform_job(stores, job, payload)
        finally:
            if beat is not None:
                beat.cancel()

    return perform


class _Alive:
    """The worker's ``worker_alive(id)`` key, so a supervisor sees it is up."""

    def __init__(self, redis: RedisClient, worker_id: str, every: float) -> None:
        self.redis, self.worker_id, self.every = redis, worker_id, every
        self.started = time.time()
        self.jobs = 0

    async def refresh(self) -> None:
        body = {"pid": os.getpid(), "started": self.started, "jobs": self.jobs}
        with store_guard("redis"):
            await self.redis.set(
                keys.worker_alive(self.worker_id), json.dumps(body), ex=int(3 * self.every)
            )

    async def keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.refresh()
            except Exception:
                log.warning("worker %s could not refresh its alive key", self.worker_id)

    async def remove(self) -> None:
        try:
            with store_guard("redis"):
                await self.redis.delete(keys.worker_alive(self.worker_id))
        except Exception:
            log.warning("worker %s could not remove its alive key", self.worker_id)


def _warn_unshared(settings: Settings, worker_id: str) -> None:
    local = [f"{k}={settings.placement(k)}" for k in ("files", "ledger")]
    if settings.placement("files") == "disk" or settings.placement("ledger") == "memory":
        log.warning(
            "worker %s: %s keep state in this process, so replicas will not see what "
            "jobs write there (use files=objects and ledger=db)",
            worker_id,
            ", ".join(local),
        )


async def serve_queue(settings: Settings, worker_id: str, concurrency: int = 4) -> None:
    """Serve the job queue until SIGTERM/SIGINT (see the module docstring)."""
    if settings.placement("jobs") != "queue":
        raise ConfigError("statelab worker serves jobs=queue; these settings run jobs in-process")
    _warn_unshared(settings, worker_id)
    # The worker's id is who ran what it writes (``ran_by`` of a summary row).
    settings = settings.model_copy(update={"replica_id": worker_id})
    async with open_stores(settings) as stores:
        assert isinstance(stores.jobs, QueueJobs) and stores.redis is not None
        policy = stores.jobs.policy
        alive = _Alive(stores.redis, worker_id, policy.heartbeat)

        async def after(_: Context) -> None:
            alive.jobs += 1

        worker = Worker(
            stores.jobs.queue,
            [(QUEUE_FUNCTION, _queued_runner(stores, policy))],
            id=worker_id,
            concurrency=concurrency,
            dequeue_timeout=1.0,
            # saq waits out its upkeep loops' sleeps when it stops: short ones, a quick stop.
            timers={"sweep": policy.sweep_every, "abort": 1, "schedule": 1, "worker_info": 2},
            shutdown_grace_period_s=max(1, int(settings.graceful_timeout_seconds)),
            after_process=after,
        )
        await alive.refresh()  # fails fast if Redis is unreachable
        fresh = asyncio.create_task(alive.keep_fresh())
        schedule = (
            asyncio.create_task(stores.timers.keep_scheduled())
            if isinstance(stores.timers, SchedulerTimers)
            else None
        )
        log.info(
            "worker %s ready (queue %s, concurrency %d)", worker_id, keys.job_queue(), concurrency
        )
        try:
            await worker.start()  # returns once a signal stopped it gracefully
        finally:
            fresh.cancel()
            if schedule is not None:
                schedule.cancel()
            await alive.remove()
            log.info("worker %s stopped after %d job(s)", worker_id, alive.jobs)


def run_worker(settings: Settings, worker_id: str, concurrency: int = 4) -> None:
    """The ``statelab worker`` process: check the schema, then serve the queue."""
    check_migrated_sync(settings.database_url)
    asyncio.run(serve_queue(settings, worker_id, concurrency))
