"""Background jobs: the placements of the ``jobs`` state kind.

- ``inprocess``: the job is an asyncio task inside the replica that enqueued it.
  Nothing records it anywhere else: if the replica dies, the job is lost — the
  point of the placement (an order then stays without its receipt).
- ``queue``: the job is a record in Redis, run by ``statelab worker`` processes
  through saq. A running job's worker refreshes the job's heartbeat; a worker's
  sweep puts a job whose heartbeat went silent back in the queue, so the job of a
  killed worker runs again elsewhere (at least once). Job effects are therefore
  written to be idempotent (see ``statelab.jobs``).

A job is a name (``receipt``, ``thumbnail``, ``timers``), a JSON payload and a
key. The key names the effect: enqueueing a key that is already waiting or running
does nothing. saq forgets a key once its job has finished (the record stays for
``ttl`` but no longer blocks an enqueue), so a key enqueued again after that runs
again: effects are idempotent, and the timers only ever enqueue a period that has
not started yet (``state/timers.py``).

Why saq: asyncio-native like our stores, typed, maintained, and its crash
recovery is a per-job heartbeat plus a periodic sweep, which works whether or
not other jobs arrive. Its one race: a sweep that runs in the milliseconds
between a worker taking a job and marking it active re-queues that job, so it
can run twice — harmless here because every effect is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from saq.queue.redis import RedisQueue

from statelab.config import Settings
from statelab.state import keys
from statelab.state.errors import store_guard
from statelab.state.redisclient import redis_client

log = logging.getLogger(__name__)

#: The one saq function every queued job goes through (``statelab.worker``).
QUEUE_FUNCTION = "perform"
#: A dead worker never confirms an abort; waiting saq's default 5 s for it only
#: delays the redelivery.
SWEEP_ABORT_WAIT = 0.5

Runner = Callable[[str, dict[str, Any]], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class JobPolicy:
    """How queued jobs are run and recovered (seconds)."""

    heartbeat: int  # a running job silent this long is taken for dead and redelivered
    timeout: int  # a job running longer is cancelled and retried
    retries: int = 5  # attempts in all, including redeliveries
    ttl: int = 3600  # a finished job's record (its result and status) stays this long

    @classmethod
    def from_settings(cls, settings: Settings) -> JobPolicy:
        hold = int(settings.job_hold_seconds) + 1
        return cls(
            heartbeat=max(1, settings.job_heartbeat_seconds),
            timeout=max(settings.job_timeout_seconds, 2 * hold),
        )

    @property
    def beat_every(self) -> float:
        """How often a running job refreshes its heartbeat: three times per period."""
        return self.heartbeat / 3

    @property
    def sweep_every(self) -> int:
        """How often workers look for jobs whose worker died."""
        return max(1, self.heartbeat // 2)


class JobQueue(Protocol):
    """Where background jobs wait and run."""

    name: str

    def attach(self, runner: Runner) -> None:
        """The function that runs a job in this process (used by ``inprocess`` only)."""
        ...

    async def enqueue(self, job: str, payload: dict[str, Any], *, key: str) -> None:
        """Schedule ``job`` with ``payload``; a key already waiting or running is ignored."""
        ...

    async def close(self) -> None: ...


class InProcessJobs:
    """Jobs as asyncio tasks of this replica. Lost if the replica dies."""

    name = "inprocess"

    def __init__(self, grace_seconds: float) -> None:
        self._runner: Runner | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._grace = grace_seconds

    def attach(self, runner: Runner) -> None:
        self._runner = runner

    async def enqueue(self, job: str, payload: dict[str, Any], *, key: str) -> None:
        if self._runner is None:
            raise RuntimeError("no job runner attached to the in-process queue")
        if key in self._tasks:
            return
        task = asyncio.create_task(self._run(self._runner, job, payload), name=f"job {key}")
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    @staticmethod
    async def _run(runner: Runner, job: str, payload: dict[str, Any]) -> None:
        try:
            await runner(job, payload)
        except Exception:
            # Nobody retries an in-process job: log it, the lab counts what is missing.
            log.exception("in-process job %s failed", job)

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Give running jobs the graceful-shutdown time, then drop them (they are lost)."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%d in-process job(s) dropped at shutdown", len(pending))
            await asyncio.wait(pending, timeout=1.0)


class _SweepingQueue(RedisQueue):
    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        return await super().sweep(lock, abort=SWEEP_ABORT_WAIT)

    async def disconnect(self) -> None:
        if hasattr(self.redis, "connection_pool"):
            await super().disconnect()
            return
        # A cluster client has a pool per node, which its aclose() closes; saq's own
        # disconnect reaches for the one pool of a plain client.
        await self._pubsub.close()
        await self.redis.aclose()


def make_saq_queue(redis_url: str) -> RedisQueue:
    """The saq queue of the shop, on its own Redis client.

    saq reads raw bytes, so the client does not decode; RESP2 is pinned because
    saq's own Redis extra still caps redis-py below 8, whose default is RESP3.
    No socket timeout: a worker blocks on the queue for up to its dequeue timeout.
    """
    client = redis_client(redis_url, protocol=2, socket_connect_timeout=1.0)
    # saq annotates a plain Redis; on a cluster it gets RedisCluster, which answers
    # every command it sends, all in the queue's one slot (tests/redis/test_cluster.py).
    return _SweepingQueue(client, name=keys.job_queue())  # type: ignore[arg-type]


class QueueJobs:
    """Jobs as records in a Redis queue, run by ``statelab worker`` processes."""

    name = "queue"

    def __init__(self, queue: RedisQueue, policy: JobPolicy) -> None:
        self.queue = queue
        self.policy = policy

    def attach(self, runner: Runner) -> None:
        """Queued jobs run in workers, never in the replica that enqueued them."""

    async def enqueue(
        self, job: str, payload: dict[str, Any], *, key: str, at: int | None = None
    ) -> None:
        """Queue ``job``; with ``at`` (unix seconds) it waits in the queue's schedule
        until then. A key still waiting or running is ignored; saq forgets a key once
        its job has finished, so a later enqueue of it runs again."""
        p = self.policy
        with store_guard("redis"):
            await asyncio.wait_for(
                self.queue.enqueue(
                    QUEUE_FUNCTION,
                    key=keys.job_key(key),  # the queue's hash tag: state/keys.py
                    scheduled=at or 0,
                    timeout=p.timeout,
                    heartbeat=p.heartbeat,
                    retries=p.retries,
                    retry_delay=1.0,
                    retry_backoff=True,
                    ttl=p.ttl,
                    job=job,
                    payload=payload,
                ),
                timeout=2.0,
            )

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.queue.disconnect(), timeout=2.0)
        except (Exception, TimeoutError):
            # saq unsubscribes before closing, which fails with Redis down: close anyway.
            log.debug("job queue disconnect failed; closing its client", exc_info=True)
            await self.queue.redis.aclose()
            if hasattr(self.queue.redis, "connection_pool"):  # a cluster client has none
                await self.queue.redis.connection_pool.disconnect()


def open_jobs(settings: Settings) -> JobQueue:
    """The job queue for the settings' ``jobs`` placement."""
    if settings.placement("jobs") == "inprocess":
        return InProcessJobs(settings.graceful_timeout_seconds)
    assert settings.redis_url is not None  # Settings refuses jobs=queue without Redis
    return QueueJobs(make_saq_queue(settings.redis_url), JobPolicy.from_settings(settings))
