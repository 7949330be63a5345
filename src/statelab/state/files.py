"""Uploaded files: the placements of the ``files`` state kind.

- ``disk``: the bytes and their metadata live in this replica's own folder
  (``data_dir/files``). Another replica has no such file and answers 404 — the
  point of the placement.
- ``objects``: the bytes live in an object store shared by every replica (a
  ``file://`` folder by default, ``s3://`` in production) and the metadata in the
  SQL ``files`` table, so any replica serves any file.

Both placements write through one object-store interface (obstore), so the
streaming, atomic-put and random-key rules are the same code. Object keys are
random and never derived from anything a client sent: a filename like
``../../x`` is only ever a display name.

An image's dimensions are read from its header before anything decodes it
(``read_image_header`` at upload, ``check_image_header`` before a thumbnail), so a
small file that claims a huge canvas — a decompression bomb — is refused instead
of being given the memory it asks for.

A file is written object first, metadata second: metadata never points at a
missing object. A crash between the two leaves an unreferenced object (garbage,
never visible). Files made by jobs may carry a deterministic id: writing the same
id twice keeps the first one, which makes a redelivered job's output idempotent.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import time
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import imagesize
import obstore
from obstore.exceptions import BaseError as ObjectStoreError
from obstore.store import LocalStore, ObjectStore, S3Store
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from statelab.config import ConfigError
from statelab.db import models
from statelab.domain.errors import Conflict, InvalidInput, LimitExceeded, NotFound, Unavailable
from statelab.state.errors import store_guard

#: Upload types we accept, recognised from the bytes (never from a header).
ALLOWED_TYPES = ("image/jpeg", "image/png", "image/webp")
#: How many leading bytes ``sniff_image`` needs.
SNIFF_BYTES = 12
#: Pillow's name of each allowed type: an image is decoded only as what it was sniffed as.
PILLOW_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
#: How far into an upload its dimensions must be found. PNG and WebP give them in
#: the first 30 bytes; a JPEG's come after its metadata segments (EXIF, ICC profile).
HEADER_BYTES = 256 * 1024
#: Longest display name kept (the column is 200 characters).
MAX_FILENAME = 200
#: Chunk size when streaming an object back to a client.
READ_CHUNK = 256 * 1024
#: Multipart part sizes: S3's minimum, and a smaller one for local folders.
S3_PART_BYTES = 5 * 1024 * 1024
LOCAL_PART_BYTES = 1024 * 1024


def sniff_image(head: bytes) -> str | None:
    """The media type of an allowed image, from its first bytes; None otherwise."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(head) >= SNIFF_BYTES and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_pixels(head: bytes) -> int | None:
    """Width x height from an image's header (``head``: the file or a prefix of it
    holding the header); None when no dimensions can be read from it."""
    size: tuple[int, int] = imagesize.get(io.BytesIO(head), exif_rotation=False)
    width, height = size  # (-1, -1) when unreadable
    return width * height if width > 0 and height > 0 else None


def check_image_header(head: bytes, content_type: str, max_pixels: int) -> None:
    """Refuse an image whose header is unreadable (``InvalidInput``) or whose canvas
    exceeds ``max_pixels`` (``LimitExceeded``) — before anything decodes it."""
    kind = PILLOW_FORMATS[content_type]
    pixels = image_pixels(head)
    if pixels is None:
        raise InvalidInput(
            f"the {kind} image's dimensions could not be read from its first "
            f"{HEADER_BYTES // 1024} KiB"
        )
    if pixels > max_pixels:
        raise LimitExceeded(
            f"the image is {pixels} pixels (width x height); at most {max_pixels} are accepted"
        )


async def read_image_header(
    head: bytes, rest: AsyncIterator[bytes], content_type: str, max_pixels: int
) -> bytes:
    """Read on from ``rest`` until the image's dimensions are known (at most about
    ``HEADER_BYTES``) and check them (``check_image_header``); returns all the bytes
    read, which come before ``rest`` in the file."""
    read = head
    while image_pixels(read) is None and len(read) < HEADER_BYTES:
        chunk = await anext(rest, None)
        if chunk is None:
            break
        read += chunk  # a few chunks at most: HEADER_BYTES bounds what is held
    check_image_header(read, content_type, max_pixels)
    return read


def clean_filename(raw: str | None, fallback: str = "upload") -> str:
    """A display name: the last path segment, without control characters, bounded.

    It is only ever shown and put in ``Content-Disposition``; it never reaches a path.
    """
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip(" .")
    return name[:MAX_FILENAME] or fallback


def new_file_id() -> str:
    """A random file id (32 hex characters, the column's width)."""
    return secrets.token_hex(16)


def _new_object_key() -> str:
    # Two hex characters of fan-out keep a file:// folder from holding every object.
    key = secrets.token_hex(16)
    return f"{key[:2]}/{key}"


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What we know about a stored file."""

    id: str
    owner_id: int
    filename: str
    content_type: str
    size: int
    object_key: str
    purpose: str  # photo | thumbnail | receipt
    order_id: int | None = None
    thumbnail: str | None = None

    def public(self) -> dict[str, Any]:
        """The shape clients see."""
        return {
            "id": self.id,
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "thumbnail": self.thumbnail,
        }


@dataclass(frozen=True, slots=True)
class NewFile:
    """A file about to be written. ``file_id`` is given by jobs whose output must be
    written once however often they run; uploads get a random one."""

    owner_id: int
    filename: str
    content_type: str
    purpose: str
    order_id: int | None = None
    file_id: str | None = None


class FileStore(Protocol):
    """Where uploaded files live. Every method is owner-checked unless it says not."""

    name: str

    async def create(self, new: NewFile, chunks: AsyncIterable[bytes]) -> FileInfo:
        """Stream ``chunks`` into a new object and record it. If ``new.file_id``
        exists already, the existing file is returned and nothing is added. An
        exception raised by ``chunks`` aborts the write and propagates unchanged."""
        ...

    async def get(self, owner_id: int, file_id: str) -> FileInfo:
        """The owner's file; ``NotFound`` for a missing file or another user's."""
        ...

    async def find(self, file_id: str) -> FileInfo | None:
        """Any user's file, for jobs (no owner check)."""
        ...

    async def list(self, owner_id: int) -> list[FileInfo]:
        """The owner's files, newest first; thumbnails are reached through their photo."""
        ...

    async def delete(self, owner_id: int, file_id: str) -> None:
        """Remove the owner's file and its thumbnail."""
        ...

    async def read(self, info: FileInfo) -> AsyncIterator[bytes]:
        """The file's bytes, streamed; ``NotFound`` before the first byte if they are gone."""
        ...

    async def set_thumbnail(self, file_id: str, thumbnail_id: str) -> bool:
        """Attach a thumbnail once; False if the file is gone or already has one."""
        ...


# ---------------------------------------------------------------------- objects


def object_store(url: str) -> ObjectStore:
    """An object store for ``file:///ABSOLUTE/PATH`` or ``s3://BUCKET[/PREFIX]``.

    S3 credentials, region and endpoint come from the usual ``AWS_*`` environment
    variables (``AWS_ENDPOINT_URL`` and ``AWS_ALLOW_HTTP=true`` for a local server).
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"object store URL {url!r}: expected file:///ABSOLUTE/PATH")
        return LocalStore(parts.path, mkdir=True)
    if parts.scheme == "s3":
        return S3Store.from_url(url)
    raise ConfigError(f"object store URL {url!r}: only file:// and s3:// are supported")


def default_object_store_url(data_dir: Path) -> str:
    """The shared ``file://`` root when none is configured: ``objects`` beside the
    replicas' data folders, so replicas started with ``data_dir=run/rN`` share ``run/objects``."""
    return (data_dir.resolve().parent / "objects").as_uri()


@contextmanager
def _object_guard() -> Iterator[None]:
    """Turn object-store failures into ``Unavailable``; a missing object is ``NotFound``."""
    try:
        yield
    except FileNotFoundError as exc:
        raise NotFound("the file's bytes are gone") from exc
    except (ObjectStoreError, ConnectionError, TimeoutError) as exc:
        raise Unavailable(f"object store failed: {exc.__class__.__name__}") from exc


class Blobs:
    """Bytes under random keys in one object store, always streamed."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        # A multipart part is buffered whole before it is sent, one at a time: an
        # upload holds at most one part in memory. S3 parts must be 5 MiB or more.
        self._part_size = S3_PART_BYTES if isinstance(store, S3Store) else LOCAL_PART_BYTES

    async def put(self, chunks: AsyncIterable[bytes]) -> tuple[str, int]:
        """Write a new object atomically; returns its key and size."""
        key = _new_object_key()
        size = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal size
            async for chunk in chunks:
                size += len(chunk)
                yield chunk

        with _object_guard():
            await obstore.put_async(
                self._store,
                key,
                counted(),
                mode="create",
                chunk_size=self._part_size,
                max_concurrency=1,
            )
        return key, size

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes; opened now, so a missing object fails before any byte."""
        with _object_guard():
            result = await obstore.get_async(self._store, key)
        return self._chunks(result.stream(min_chunk_size=READ_CHUNK))

    async def _chunks(self, stream: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        with _object_guard():
            async for chunk in stream:
                yield bytes(chunk)

    async def remove(self, key: str) -> None:
        """Delete an object; an object already gone is fine."""
        with suppress(FileNotFoundError), _object_guard():
            await obstore.delete_async(self._store, key)


def _file_info(row: models.StoredFile) -> FileInfo:
    return FileInfo(
        id=row.id,
        owner_id=row.owner_id,
        filename=row.filename,
        content_type=row.content_type,
        size=row.size,
        object_key=row.object_key,
        purpose=row.purpose,
        order_id=row.order_id,
        thumbnail=row.thumbnail,
    )


def _stored(new: NewFile, key: str, size: int) -> FileInfo:
    """What is known of a new file once its bytes are stored under ``key``."""
    return FileInfo(
        id=new.file_id or new_file_id(),
        owner_id=new.owner_id,
        filename=new.filename,
        content_type=new.content_type,
        size=size,
        object_key=key,
        purpose=new.purpose,
        order_id=new.order_id,
    )


class ObjectFiles:
    """Bytes in the shared object store, metadata in the SQL ``files`` table."""

    name = "objects"

    def __init__(self, blobs: Blobs, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._blobs = blobs
        self._sessions = sessions

    async def create(self, new: NewFile, chunks: AsyncIterable[bytes]) -> FileInfo:
        if new.file_id is not None and (known := await self.find(new.file_id)) is not None:
            return known
        key, size = await self._blobs.put(chunks)
        info = _stored(new, key, size)
        try:
            with store_guard("database"):
                async with self._sessions() as db, db.begin():
                    db.add(models.StoredFile(**asdict(info)))
        except IntegrityError as exc:
            await self._blobs.remove(key)
            # Two runs of one job raced: the first metadata row wins.
            winner = await self.find(info.id)
            if winner is None:
                raise Conflict("the file refers to an owner or order the database lacks") from exc
            return winner
        except BaseException:
            await self._blobs.remove(key)
            raise
        return info

    async def find(self, file_id: str) -> FileInfo | None:
        with store_guard("database"):
            async with self._sessions() as db:
                row = await db.get(models.StoredFile, file_id)
        return None if row is None else _file_info(row)

    async def get(self, owner_id: int, file_id: str) -> FileInfo:
        info = await self.find(file_id)
        if info is None or info.owner_id != owner_id:
            raise NotFound(f"file {file_id} not found")
        return info

    async def list(self, owner_id: int) -> list[FileInfo]:
        f = models.StoredFile
        with store_guard("database"):
            async with self._sessions() as db:
                rows = await db.scalars(
                    select(f)
                    .where(f.owner_id == owner_id, f.purpose != "thumbnail")
                    .order_by(f.created_at.desc(), f.id)
                )
                return [_file_info(r) for r in rows]

    async def delete(self, owner_id: int, file_id: str) -> None:
        info = await self.get(owner_id, file_id)
        _refuse_receipt(info)
        gone = [info]
        with store_guard("database"):
            async with self._sessions() as db, db.begin():
                if info.thumbnail is not None:
                    thumb = await db.get(models.StoredFile, info.thumbnail)
                    if thumb is not None:
                        gone.append(_file_info(thumb))
                        await db.delete(thumb)
                row = await db.get(models.StoredFile, info.id)
                if row is not None:
                    await db.delete(row)
        for f in gone:  # metadata first: an object is never served after its row is gone
            await self._blobs.remove(f.object_key)

    async def read(self, info: FileInfo) -> AsyncIterator[bytes]:
        return await self._blobs.open(info.object_key)

    async def set_thumbnail(self, file_id: str, thumbnail_id: str) -> bool:
        f = models.StoredFile
        with store_guard("database"):
            async with self._sessions() as db, db.begin():
                result = await db.execute(
                    update(f)
                    .where(f.id == file_id, f.thumbnail.is_(None))
                    .values(thumbnail=thumbnail_id)
                )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def _refuse_receipt(info: FileInfo) -> None:
    if info.purpose == "receipt":
        raise Conflict("a receipt stays with its order and cannot be deleted")


# ------------------------------------------------------------------------- disk


class DiskFiles:
    """Bytes and metadata in this replica's own folder: ``ROOT/objects`` through the
    same object-store interface, and one JSON document per file in ``ROOT/meta``."""

    name = "disk"

    def __init__(self, root: Path) -> None:
        self._meta = root / "meta"
        self._meta.mkdir(parents=True, exist_ok=True)
        objects = root / "objects"
        objects.mkdir(parents=True, exist_ok=True)
        self._blobs = Blobs(LocalStore(objects))
        # One replica process: a lock makes "check, then write" atomic for it.
        self._lock = asyncio.Lock()

    def _meta_path(self, file_id: str) -> Path | None:
        # Ids come from URLs: only our own hex ids may name a metadata file.
        if len(file_id) != 32 or any(c not in "0123456789abcdef" for c in file_id):
            return None
        return self._meta / f"{file_id}.json"

    def _load(self, file_id: str) -> FileInfo | None:
        path = self._meta_path(file_id)
        if path is None:
            return None
        try:
            return _parse(path.read_bytes())[1]
        except FileNotFoundError:
            return None

    def _store(self, info: FileInfo, created: float | None = None) -> None:
        path = self._meta_path(info.id)
        assert path is not None
        doc = {"created": created if created is not None else time.time(), "file": asdict(info)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)  # atomic: a reader sees the old or the new document

    async def create(self, new: NewFile, chunks: AsyncIterable[bytes]) -> FileInfo:
        if new.file_id is not None and (known := await self.find(new.file_id)) is not None:
            return known
        key, size = await self._blobs.put(chunks)
        info = _stored(new, key, size)
        async with self._lock:
            known = await asyncio.to_thread(self._load, info.id)
            if known is None:
                await asyncio.to_thread(self._store, info)
        if known is not None:
            await self._blobs.remove(key)
            return known
        return info

    async def find(self, file_id: str) -> FileInfo | None:
        return await asyncio.to_thread(self._load, file_id)

    async def get(self, owner_id: int, file_id: str) -> FileInfo:
        info = await self.find(file_id)
        if info is None or info.owner_id != owner_id:
            raise NotFound(f"file {file_id} not found")
        return info

    def _list(self, owner_id: int) -> list[FileInfo]:
        found = []
        for path in self._meta.glob("*.json"):
            with suppress(FileNotFoundError):
                created, info = _parse(path.read_bytes())
                if info.owner_id == owner_id and info.purpose != "thumbnail":
                    found.append((created, info))
        found.sort(key=lambda pair: (-pair[0], pair[1].id))
        return [info for _, info in found]

    async def list(self, owner_id: int) -> list[FileInfo]:
        return await asyncio.to_thread(self._list, owner_id)

    async def delete(self, owner_id: int, file_id: str) -> None:
        info = await self.get(owner_id, file_id)
        _refuse_receipt(info)
        gone = [info]
        if info.thumbnail is not None and (thumb := await self.find(info.thumbnail)):
            gone.append(thumb)
        for f in gone:
            path = self._meta_path(f.id)
            if path is not None:
                await asyncio.to_thread(path.unlink, True)
            await self._blobs.remove(f.object_key)

    async def read(self, info: FileInfo) -> AsyncIterator[bytes]:
        return await self._blobs.open(info.object_key)

    def _attach(self, file_id: str, thumbnail_id: str) -> bool:
        path = self._meta_path(file_id)
        if path is None:
            return False
        try:
            created, info = _parse(path.read_bytes())
        except FileNotFoundError:
            return False
        if info.thumbnail is not None:
            return False
        self._store(FileInfo(**{**asdict(info), "thumbnail": thumbnail_id}), created)
        return True

    async def set_thumbnail(self, file_id: str, thumbnail_id: str) -> bool:
        async with self._lock:
            return await asyncio.to_thread(self._attach, file_id, thumbnail_id)


def _parse(raw: bytes) -> tuple[float, FileInfo]:
    doc: dict[str, Any] = json.loads(raw)
    return float(doc["created"]), FileInfo(**doc["file"])
