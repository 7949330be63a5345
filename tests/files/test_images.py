"""Decoding images safely: a small file claiming a huge canvas (a decompression
bomb) is refused at upload with problem+json and skipped by the thumbnail job, and
an image is decoded only as the type its bytes were sniffed as."""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from statelab.config import build_settings
from statelab.domain.errors import InvalidInput
from statelab.jobs import perform_job, render_thumbnail
from statelab.state import Stores, open_stores
from statelab.state.files import NewFile
from tests.files.support import SECRET, Deployment, image_bytes
from tests.support import register_and_login, unique


def webp_bomb(width: int = 12_000, height: int = 12_000) -> bytes:
    """A valid animated WebP of two 4x4 frames on a canvas of ``width`` x ``height``:
    about 140 bytes, and libwebp allocates the whole canvas when it is opened."""
    frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 255, 0))]
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    data = bytearray(out.getvalue())
    assert data[12:16] == b"VP8X"
    data[24:27] = (width - 1).to_bytes(3, "little")
    data[27:30] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG header claiming ``width`` x ``height`` RGB, with a few rows of zeros."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * width) * 4, 9)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def jpeg_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A real JPEG whose frame header (SOF0) was changed to claim a huge size."""
    data = bytearray(image_bytes("JPEG", (64, 48)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


async def upload(client: httpx.AsyncClient, headers: dict[str, str], data: bytes) -> httpx.Response:
    files = {"file": ("photo", data, "application/octet-stream")}
    return await client.post("/api/files", files=files, headers=headers)


def stored_objects(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("bomb", [webp_bomb, png_bomb, jpeg_bomb], ids=["webp", "png", "jpeg"])
async def test_decompression_bombs_are_refused_at_upload(
    deployment: Deployment, bomb: Callable[[], bytes]
) -> None:
    r1 = await deployment.replica("r1")
    headers = await register_and_login(r1, unique("bomber"))
    r = await upload(r1, headers, bomb())
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert "pixels" in r.json()["detail"]
    assert (await r1.get("/api/files")).json() == {"files": []}
    assert stored_objects(deployment.root / "objects") == []


async def test_the_pixel_budget_is_a_setting(deployment: Deployment) -> None:
    r1 = await deployment.replica("r1", max_image_pixels=10_000)
    headers = await register_and_login(r1, unique("budget"))
    refused = await upload(r1, headers, image_bytes("PNG", (200, 200)))
    assert refused.status_code == 422, refused.text
    assert "40000 pixels" in refused.json()["detail"]
    taken = await upload(r1, headers, image_bytes("WEBP", (100, 100)))
    assert taken.status_code == 201, taken.text


async def test_an_image_without_readable_dimensions_is_refused(deployment: Deployment) -> None:
    r1 = await deployment.replica("r1")
    headers = await register_and_login(r1, unique("garbled"))
    r = await upload(r1, headers, b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 100)
    assert r.status_code == 422, r.text
    assert "dimensions" in r.json()["detail"]
    assert stored_objects(deployment.root / "objects") == []


# ----------------------------------------------------------------------- worker


@pytest.fixture
async def stores(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Stores]:
    settings = build_settings(
        profile="stateful", database_url=sqlite_url, data_dir=tmp_path, secret_key=SECRET
    )
    async with open_stores(settings) as opened:
        yield opened


async def _photo(stores: Stores, data: bytes, content_type: str) -> str:
    async def once() -> AsyncIterator[bytes]:
        yield data

    new = NewFile(owner_id=1, filename="p", content_type=content_type, purpose="photo")
    return (await stores.files.create(new, once())).id


async def test_the_thumbnail_job_skips_a_bomb_and_carries_on(
    stores: Stores, caplog: pytest.LogCaptureFixture
) -> None:
    # Stored without the upload's check, as a file written before it existed would be.
    bomb = await _photo(stores, webp_bomb(), "image/webp")
    with caplog.at_level(logging.WARNING):
        assert await perform_job(stores, "thumbnail", {"file_id": bomb}) is False
    assert any(bomb in r.getMessage() and "pixels" in r.getMessage() for r in caplog.records)
    info = await stores.files.find(bomb)
    assert info is not None and info.thumbnail is None
    good = await _photo(stores, image_bytes("WEBP"), "image/webp")
    assert await perform_job(stores, "thumbnail", {"file_id": good}) is True


def test_an_image_is_decoded_only_as_its_sniffed_type() -> None:
    jpeg = image_bytes("JPEG", (300, 200))
    assert Image.open(io.BytesIO(render_thumbnail(jpeg, "image/jpeg", 60_000))).size == (256, 171)
    with pytest.raises(InvalidInput, match="image/png"):
        render_thumbnail(jpeg, "image/png", 60_000)
    with pytest.raises(InvalidInput, match="60000 pixels"):
        render_thumbnail(jpeg, "image/jpeg", 59_999)
