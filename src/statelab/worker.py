"""Background jobs and the queue worker.

Jobs (``perform_job`` runs one, in a replica for ``jobs=inprocess`` or in
``statelab worker`` for ``jobs=queue``):

- ``receipt`` (payload ``{"order": <order body>, "owner_id": <buyer>}``): renders the
  order's receipt, stores it as a file of the buyer and attaches it to the order
  (``Ledger.set_receipt``).
- ``thumbnail`` (payload ``{"file_id": ID}``): makes a thumbnail of an uploaded
  photo with Pillow, stores it and attaches it to the photo.

A queued job runs at least once: a redelivered job runs again from the start.
So every effect is written once whatever the number of runs: the output file's
id is derived from the job's subject (an HMAC of the order or photo id), a second
write of that id keeps the first file, and attaching is a conditional update
that only fills an empty field.

``run_worker`` is the worker process: it serves the saq queue until SIGTERM or
SIGINT, then stops taking jobs, lets running ones finish for the graceful
timeout and re-queues the rest. It logs to stderr and announces readiness with
the log line ``worker <id> ready`` and the Redis key ``keys.worker_alive(id)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError
from redis.asyncio import Redis
from saq import Worker
from saq.job import Job
from saq.types import Context

from statelab.config import ConfigError, Settings
from statelab.db.migrate import check_migrated_sync
from statelab.state import Stores, keys, open_stores
from statelab.state.errors import store_guard
from statelab.state.files import NewFile, clean_filename
from statelab.state.jobs import QUEUE_FUNCTION, JobPolicy, QueueJobs

log = logging.getLogger(__name__)

RECEIPT = "receipt"
THUMBNAIL = "thumbnail"
#: Longest side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 256
#: Images larger than this are not decoded (a small file can claim a huge canvas).
MAX_IMAGE_PIXELS = 40_000_000


def derived_id(secret: str, kind: str, subject: str) -> str:
    """The id of a job's output file: fixed for one subject, unguessable without the secret."""
    mac = hmac.new(secret.encode(), f"{kind}:{subject}".encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _hold(settings: Settings, what: str) -> None:
    """The lab's and tests' pause half-way through a job, so a kill lands inside it."""
    if settings.job_hold_seconds > 0:
        log.info("job %s holding for %.1f s", what, settings.job_hold_seconds)
        await asyncio.sleep(settings.job_hold_seconds)


# ---------------------------------------------------------------------- receipt


def render_receipt(order: dict[str, Any]) -> str:
    """The receipt of an order as plain text."""
    lines = [
        "statelab pizza — receipt",
        f"order {order['id']}  {order.get('created_at', '')}",
        "",
    ]
    for item in order.get("items", []):
        cents = int(item["price_cents"]) * int(item["quantity"])
        lines.append(f"{item['quantity']:>3} x {item['name']:<28} {cents / 100:>9.2f}")
    lines += ["", f"{'total':<34} {int(order['total_cents']) / 100:>9.2f}", "paid from balance"]
    return "\n".join(lines) + "\n"


async def make_receipt(stores: Stores, payload: dict[str, Any]) -> bool:
    """Store the order's receipt and attach it; True if this run attached it."""
    order = payload["order"]
    order_id, owner_id = int(order["id"]), int(payload["owner_id"])
    new = NewFile(
        owner_id=owner_id,
        filename=f"receipt-{order_id}.txt",
        content_type="text/plain; charset=utf-8",
        purpose=RECEIPT,
        # The SQL row may point at the order only when the order is in SQL too.
        order_id=order_id if stores.ledger.name == "db" else None,
        # The creation time tells apart orders of databases reset under one store.
        file_id=derived_id(
            stores.settings.secret_key, RECEIPT, f"{order_id}:{order.get('created_at', '')}"
        ),
    )
    info = await stores.files.create(new, _once(render_receipt(order).encode()))
    await _hold(stores.settings, f"receipt of order {order_id}")
    attached = await stores.ledger.set_receipt(order_id, info.id)
    log.info(
        "receipt %s of order %s %s", info.id, order_id, "attached" if attached else "was there"
    )
    return attached


# -------------------------------------------------------------------- thumbnail


def render_thumbnail(data: bytes) -> bytes | None:
    """A PNG at most ``THUMBNAIL_SIZE`` pixels on a side, or None for an unreadable image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                return None
            img.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))  # JPEG: decode at low size
            small = ImageOps.exif_transpose(img)
            small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            if small.mode not in ("RGB", "RGBA", "L", "LA"):
                small = small.convert("RGBA")
            out = io.BytesIO()
            small.save(out, "PNG", optimize=True)  # no EXIF: the thumbnail carries no metadata
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


async def make_thumbnail(stores: Stores, payload: dict[str, Any]) -> bool:
    """Store the photo's thumbnail and attach it; True if this run attached it."""
    file_id = str(payload["file_id"])
    photo = await stores.files.find(file_id)
    if photo is None or photo.purpose != "photo" or photo.thumbnail is not None:
        return False  # deleted meanwhile, or done by an earlier run
    data = b"".join([chunk async for chunk in await stores.files.read(photo)])
    thumb = await asyncio.to_thread(render_thumbnail, data)
    if thumb is None:
        log.warning("photo %s could not be decoded: no thumbnail", file_id)
        return False
    stem = clean_filename(photo.filename).rsplit(".", 1)[0]
    new = NewFile(
        owner_id=photo.owner_id,
        filename=clean_filename(f"{stem}-thumbnail.png"),
        content_type="image/png",
        purpose=THUMBNAIL,
        file_id=derived_id(stores.settings.secret_key, THUMBNAIL, file_id),
    )
    info = await stores.files.create(new, _once(thumb))
    await _hold(stores.settings, f"thumbnail of {file_id}")
    return await stores.files.set_thumbnail(file_id, info.id)


JOBS: dict[str, Callable[[Stores, dict[str, Any]], Awaitable[bool]]] = {
    RECEIPT: make_receipt,
    THUMBNAIL: make_thumbnail,
}


async def perform_job(stores: Stores, job: str, payload: dict[str, Any]) -> bool:
    """Run one job against the stores; True if its effect was made by this run."""
    function = JOBS.get(job)
    if function is None:
        log.error("unknown job %r dropped", job)
        return False
    log.info("job %s started", job)
    done = await function(stores, payload)
    log.info("job %s finished", job)
    return done


# ----------------------------------------------------------------------- worker


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

    def __init__(self, redis: Redis, worker_id: str, every: float) -> None:
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
            timers={"sweep": policy.sweep_every, "abort": 1, "schedule": 1, "worker_info": 10},
            shutdown_grace_period_s=max(1, int(settings.graceful_timeout_seconds)),
            after_process=after,
        )
        await alive.refresh()  # fails fast if Redis is unreachable
        fresh = asyncio.create_task(alive.keep_fresh())
        log.info(
            "worker %s ready (queue %s, concurrency %d)", worker_id, keys.job_queue(), concurrency
        )
        try:
            await worker.start()  # returns once a signal stopped it gracefully
        finally:
            fresh.cancel()
            await alive.remove()
            log.info("worker %s stopped after %d job(s)", worker_id, alive.jobs)


def run_worker(settings: Settings, worker_id: str, concurrency: int = 4) -> None:
    """The ``statelab worker`` process: check the schema, then serve the queue."""
    check_migrated_sync(settings.database_url)
    asyncio.run(serve_queue(settings, worker_id, concurrency))
