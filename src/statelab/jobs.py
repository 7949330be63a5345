"""Background jobs: what each one does, for the replicas and the queue worker alike.

``perform_job`` runs one, in a replica for ``jobs=inprocess`` or in
``statelab worker`` for ``jobs=queue``:

- ``receipt`` (payload ``{"order": <order body>, "owner_id": <buyer>}``): renders the
  order's receipt, stores it as a file of the buyer and attaches it to the order
  (``Ledger.set_receipt``).
- ``thumbnail`` (payload ``{"file_id": ID}``): makes a thumbnail of an uploaded
  photo with Pillow, stores it and attaches it to the photo. The photo is decoded
  only as the type it was sniffed as at upload, only if its header's canvas is
  within ``max_image_pixels``, and by at most ``DECODE_SLOTS`` threads of a process
  at once, so decoding holds at most DECODE_SLOTS x max_image_pixels x 4 bytes.
  A photo refused by these rules gets no thumbnail: the job ends, logged, unfailed.
- ``timers`` (payload ``{"period": N, "seconds": S}``, ``timers=scheduler`` only):
  the periodic work of period N (``state/timers.py``): its sales summary (written
  once, whatever the number of runs), the sweeps of expired rows.

A queued job runs at least once: a redelivered job runs again from the start.
So every effect is written once whatever the number of runs: the output file's
id is derived from the job's subject (an HMAC of the order or photo id under the
key of that purpose, ``stores.keys.file_ids``), a second
write of that id keeps the first file, and attaching is a conditional update
that only fills an empty field.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.Image import DecompressionBombError

from statelab.config import Settings
from statelab.domain.errors import InvalidInput
from statelab.state import Stores
from statelab.state.files import PILLOW_FORMATS, NewFile, check_image_header, clean_filename
from statelab.state.timers import TIMER_JOB, SchedulerTimers

log = logging.getLogger(__name__)

RECEIPT = "receipt"
THUMBNAIL = "thumbnail"
#: Longest side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 256
#: Images one process decodes at once: with the pixel budget, this bounds the memory
#: thumbnails take whatever the number of jobs running.
DECODE_SLOTS = 2
_decoding = threading.BoundedSemaphore(DECODE_SLOTS)
#: What Pillow raises for an image it cannot (or will not) decode.
_UNREADABLE = (UnidentifiedImageError, OSError, ValueError, EOFError, DecompressionBombError)


def derived_id(key: bytes, kind: str, subject: str) -> str:
    """The id of a job's output file: fixed for one subject, unguessable without the key."""
    mac = hmac.new(key, f"{kind}:{subject}".encode(), hashlib.sha256)
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
            stores.keys.file_ids, RECEIPT, f"{order_id}:{order.get('created_at', '')}"
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


def render_thumbnail(data: bytes, content_type: str, max_pixels: int) -> bytes:
    """A PNG at most ``THUMBNAIL_SIZE`` pixels on a side of an image of ``content_type``
    (as sniffed at upload); ``InvalidInput`` for an image that is refused or unreadable.
    Blocking: run it in a thread."""
    # The header first: a WebP decoder allocates its whole canvas as it opens.
    check_image_header(data, content_type, max_pixels)
    with _decoding:
        try:
            return _render(data, PILLOW_FORMATS[content_type], max_pixels)
        except _UNREADABLE as exc:
            why = exc.__class__.__name__
            raise InvalidInput(f"the image cannot be decoded as {content_type} ({why})") from exc


def _render(data: bytes, kind: str, max_pixels: int) -> bytes:
    with Image.open(io.BytesIO(data), formats=[kind]) as img:
        # Pillow's own reading of the header is what decodes: should it disagree with
        # the one checked before, check it too before any pixel is decoded.
        if img.width * img.height > max_pixels:
            raise InvalidInput(f"the image is {img.width}x{img.height} pixels: over budget")
        img.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))  # JPEG: decode at low size
        img.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        # Turned upright after shrinking, so no full-size copy is ever made.
        small = ImageOps.exif_transpose(img)
        if small.mode not in ("RGB", "RGBA", "L", "LA"):
            small = small.convert("RGBA")
        out = io.BytesIO()
        small.save(out, "PNG", optimize=True)  # no EXIF: the thumbnail carries no metadata
        return out.getvalue()


async def make_thumbnail(stores: Stores, payload: dict[str, Any]) -> bool:
    """Store the photo's thumbnail and attach it; True if this run attached it."""
    file_id = str(payload["file_id"])
    photo = await stores.files.find(file_id)
    if photo is None or photo.purpose != "photo" or photo.thumbnail is not None:
        return False  # deleted meanwhile, or done by an earlier run
    data = b"".join([chunk async for chunk in await stores.files.read(photo)])
    budget = stores.settings.max_image_pixels
    try:
        thumb = await asyncio.to_thread(render_thumbnail, data, photo.content_type, budget)
    except InvalidInput as exc:
        log.warning("photo %s gets no thumbnail: %s", file_id, exc.detail)
        return False
    stem = clean_filename(photo.filename).rsplit(".", 1)[0]
    new = NewFile(
        owner_id=photo.owner_id,
        filename=clean_filename(f"{stem}-thumbnail.png"),
        content_type="image/png",
        purpose=THUMBNAIL,
        file_id=derived_id(stores.keys.file_ids, THUMBNAIL, file_id),
    )
    info = await stores.files.create(new, _once(thumb))
    await _hold(stores.settings, f"thumbnail of {file_id}")
    return await stores.files.set_thumbnail(file_id, info.id)


# ----------------------------------------------------------------------- timers


async def run_timers(stores: Stores, payload: dict[str, Any]) -> bool:
    """A period's work (``timers=scheduler``); True if it wrote a summary row."""
    timers = stores.timers
    if not isinstance(timers, SchedulerTimers):
        log.error("a timers job reached a process with timers=%s; dropped", timers.name)
        return False
    written = await timers.run_job(payload, ran_by=stores.settings.replica_id)
    log.info("period %s: %d summary row(s) written", payload.get("period"), written)
    return written > 0


JOBS: dict[str, Callable[[Stores, dict[str, Any]], Awaitable[bool]]] = {
    RECEIPT: make_receipt,
    THUMBNAIL: make_thumbnail,
    TIMER_JOB: run_timers,
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
