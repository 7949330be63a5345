"""Uploads: ``/api/files``, and the hooks that turn shop events into jobs.

An upload is streamed: the multipart body is parsed as it arrives and the ``file``
part goes straight into the file store, so no upload sits whole in memory or on
the replica's disk. Its type comes from its first bytes (JPEG, PNG or WebP; the
Content-Type a client sends is ignored), its size is counted as it streams (413
past ``max_upload_bytes``), and its name is only ever a display name. Downloads
are attachments with ``nosniff``, so a browser never renders an upload inline.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from statelab.domain.errors import InvalidInput, LimitExceeded, MalformedRequest, Unavailable
from statelab.state import Stores
from statelab.state.files import (
    SNIFF_BYTES,
    FileInfo,
    NewFile,
    clean_filename,
    read_image_header,
    sniff_image,
)
from statelab.web.deps import StoresDep, UserDep
from statelab.web.params import NUL, KeyPath, OptionalIdQuery
from statelab.web.problems import problem, responses
from statelab.web.shop import OrderHook

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/files", tags=["files"])

#: What a multipart body may add around the file (boundaries, part headers).
MULTIPART_OVERHEAD = 64 * 1024
FIELD = b"file"


class FileOut(BaseModel):
    id: str
    filename: str
    content_type: str
    size: int
    thumbnail: str | None


class FilesOut(BaseModel):
    files: list[FileOut]


class FileTooLarge(LimitExceeded):
    """The file grew past the upload limit while it streamed in."""


class _FilePart:
    """The ``file`` part of a multipart body, pulled out as the body arrives.

    The parser's callbacks queue events; each read feeds one body chunk and hands
    the queued events on, so at most one chunk is held at a time.
    """

    def __init__(self, body: AsyncIterator[bytes], boundary: bytes) -> None:
        self._body = body
        self._events: deque[tuple[str, bytes]] = deque()
        self._headers: dict[bytes, bytes] = {}
        self._name = self._value = b""
        self._inside = self._found = self._finished = False
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._headers.clear,
            "on_header_field": self._on_field,
            "on_header_value": self._on_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_data,
            "on_part_end": self._on_part_end,
        }
        self._parser = MultipartParser(boundary, callbacks, max_header_count=8)

    def _on_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _on_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._name.lower()] = self._value
        self._name = self._value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        if options.get(b"name") == FIELD and not self._found:
            self._found = self._inside = True
            self._events.append(("start", options.get(b"filename", b"")))

    def _on_data(self, data: bytes, start: int, end: int) -> None:
        if self._inside and end > start:
            self._events.append(("data", data[start:end]))

    def _on_part_end(self) -> None:
        if self._inside:
            self._inside = False
            self._events.append(("end", b""))

    async def _next(self) -> tuple[str, bytes] | None:
        while not self._events:
            if self._finished:
                return None
            chunk = await anext(self._body, None)
            try:
                if chunk is None:
                    self._finished = True
                    self._parser.finalize()
                else:
                    self._parser.write(chunk)
            except FormParserError as exc:
                raise MalformedRequest("the multipart body is malformed") from exc
        return self._events.popleft()

    async def open(self) -> str:
        """Read up to the ``file`` part; returns the filename the client gave."""
        while (event := await self._next()) is not None:
            if event[0] == "start":
                filename = event[1].decode("utf-8", "replace")
                if NUL in filename:  # refused like any other string, not cleaned
                    raise InvalidInput("filename: must not contain a NUL character")
                return filename
        raise MalformedRequest("send the upload as a multipart field named 'file'")

    async def data(self) -> AsyncIterator[bytes]:
        """The part's bytes, chunk by chunk as they arrive."""
        while (event := await self._next()) is not None:
            if event[0] == "end":
                return
            yield event[1]
        raise MalformedRequest("the body ended inside the file")


def _boundary(request: Request) -> bytes:
    ctype, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise _Unsupported("send the upload as multipart/form-data with a field named 'file'")
    return boundary


class _Unsupported(Exception):
    """A request this endpoint cannot take: answered 415."""


async def _peek(chunks: AsyncIterator[bytes], want: int) -> bytes:
    head = b""
    while len(head) < want:
        chunk = await anext(chunks, None)
        if chunk is None:
            break
        head += chunk
    return head


async def _capped(head: bytes, rest: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = len(head)
    if size > limit:
        raise FileTooLarge(f"the upload limit is {limit} bytes")
    yield head
    async for chunk in rest:
        size += len(chunk)
        if size > limit:
            raise FileTooLarge(f"the upload limit is {limit} bytes")
        yield chunk


def _file_out(info: FileInfo) -> dict[str, Any]:
    return info.public()


#: The body the upload route reads itself, as a stream (so FastAPI does not parse it).
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                    },
                },
                "encoding": {"file": {"contentType": "image/jpeg, image/png, image/webp"}},
            }
        },
    }
}

#: What a download can be: an uploaded photo or its thumbnail, or a receipt.
DOWNLOAD_TYPES = ("image/jpeg", "image/png", "image/webp", "text/plain")
BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.post(
    "",
    status_code=201,
    response_model=FileOut,
    responses=responses(400, 404, 409, 422),
    openapi_extra=UPLOAD_BODY,
)
async def upload(
    request: Request, stores: StoresDep, user: UserDep, order_id: OptionalIdQuery = None
) -> Response:
    """Upload a photo (multipart field ``file``), optionally for one of your orders."""
    try:
        part = _FilePart(request.stream(), _boundary(request))
    except _Unsupported as exc:
        return problem(415, "Unsupported media type", str(exc))
    if order_id is not None:
        await stores.ledger.order(user.user_id, order_id)  # NotFound unless it is yours
    filename = clean_filename(await part.open())
    chunks = part.data()
    head = await _peek(chunks, SNIFF_BYTES)
    content_type = sniff_image(head)
    if content_type is None:
        allowed = "JPEG, PNG or WebP"
        return problem(415, "Unsupported media type", f"the file is not a {allowed} image")
    # Its dimensions before any byte is stored: a decompression bomb is refused (422).
    head = await read_image_header(head, chunks, content_type, stores.settings.max_image_pixels)
    limit = stores.settings.max_upload_bytes
    new = NewFile(user.user_id, filename, content_type, "photo", order_id=order_id)
    try:
        info = await stores.files.create(new, _capped(head, chunks, limit))
    except FileTooLarge as exc:
        return problem(413, "Payload too large", exc.detail)
    await _enqueue(stores, "thumbnail", {"file_id": info.id}, key=f"thumbnail:{info.id}")
    return JSONResponse(_file_out(info), 201, {"Location": f"/api/files/{info.id}"})


@router.get("")
async def list_files(stores: StoresDep, user: UserDep) -> FilesOut:
    """Your files (photos and receipts), newest first."""
    found = await stores.files.list(user.user_id)
    return FilesOut(files=[FileOut(**_file_out(f)) for f in found])


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact name in RFC 5987 form."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.get(
    "/{file_id}",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file, as an attachment",
            "content": dict.fromkeys(DOWNLOAD_TYPES, BINARY),
        },
        **responses(404),
    },
)
async def download(file_id: KeyPath, stores: StoresDep, user: UserDep) -> StreamingResponse:
    """Your file's bytes, always as an attachment that browsers must not sniff."""
    info = await stores.files.get(user.user_id, file_id)
    chunks = await stores.files.read(info)
    headers = {
        "Content-Disposition": content_disposition(info.filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, no-store",
        "Content-Length": str(info.size),
    }
    return StreamingResponse(chunks, media_type=info.content_type, headers=headers)


@router.delete("/{file_id}", status_code=204, responses=responses(404, 409))
async def delete(file_id: KeyPath, stores: StoresDep, user: UserDep) -> Response:
    """Delete your photo and its thumbnail (receipts stay with their order: 409)."""
    await stores.files.delete(user.user_id, file_id)
    return Response(status_code=204)


# -------------------------------------------------------------------- job hooks


async def _enqueue(stores: Stores, job: str, payload: dict[str, Any], *, key: str) -> None:
    """Schedule a job; if the queue is down the request still succeeds (the job is
    lost, which the lab detects as an order without a receipt)."""
    try:
        await stores.jobs.enqueue(job, payload, key=key)
    except Unavailable as exc:
        log.warning("%s job %s not scheduled: %s", job, key, exc.detail)


ORDER_FIELDS = ("id", "status", "total_cents", "items", "created_at")


def receipt_hook(app: FastAPI) -> OrderHook:
    """The ``on_order`` hook: schedule the receipt job of a paid order for its buyer."""

    async def enqueue_receipt(order: dict[str, Any], buyer: int) -> None:
        body = {k: order[k] for k in ORDER_FIELDS if k in order}
        # The creation time keeps the key unique across databases reset under one Redis.
        key = f"receipt:{order['id']}:{order.get('created_at', '')}"
        await _enqueue(app.state.stores, "receipt", {"order": body, "owner_id": buyer}, key=key)

    return enqueue_receipt
