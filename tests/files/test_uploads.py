"""Uploads through replicas of one deployment: where files live, and the attacks an
upload endpoint must refuse."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.files.support import Deployment, eventually, image_bytes, multipart, repeated
from tests.support import register_and_login, share_login, unique

PNG = image_bytes("PNG")


async def upload(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    data: bytes,
    filename: str = "photo.png",
    content_type: str = "image/png",
) -> httpx.Response:
    return await client.post(
        "/api/files", files={"file": (filename, data, content_type)}, headers=headers
    )


def stored_objects(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_objects_are_readable_through_every_replica(deployment: Deployment) -> None:
    r1 = await deployment.replica("r1")
    r2 = await deployment.replica("r2")
    r3 = await deployment.replica("r3")
    headers = await register_and_login(r1, unique("ann"))
    r = await upload(r1, headers, PNG)
    assert r.status_code == 201, r.text
    file = r.json()
    assert file["size"] == len(PNG) and file["content_type"] == "image/png"
    for other in (r2, r3):
        share_login(r1, other)
        got = await other.get(f"/api/files/{file['id']}")
        assert got.status_code == 200, got.text
        assert got.headers["X-Served-By"] == other.app.state.settings.replica_id  # type: ignore[attr-defined]
        assert got.content == PNG
    listed = (await r3.get("/api/files")).json()["files"]
    assert [f["id"] for f in listed] == [file["id"]]


async def test_disk_files_stay_on_the_replica_that_took_them(deployment: Deployment) -> None:
    place = {"files": "disk", "jobs": "inprocess"}
    r1 = await deployment.replica("r1", place=place)
    r2 = await deployment.replica("r2", place=place)
    r3 = await deployment.replica("r3", place=place)
    headers = await register_and_login(r1, unique("dan"))
    file_id = (await upload(r1, headers, PNG)).json()["id"]
    assert (await r1.get(f"/api/files/{file_id}")).content == PNG
    for other in (r2, r3):
        share_login(r1, other)  # the session is in Redis: the user is known there...
        assert (await other.get("/api/auth/me")).status_code == 200
        assert (await other.get(f"/api/files/{file_id}")).status_code == 404  # ...the file not
        assert (await other.get("/api/files")).json() == {"files": []}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
async def test_type_comes_from_the_bytes(deployment: Deployment, fmt: str) -> None:
    r1 = await deployment.replica("r1")
    headers = await register_and_login(r1, unique("tia"))
    data = image_bytes(fmt, (32, 32))
    r = await upload(r1, headers, data, "x.bin", "application/octet-stream")
    assert r.status_code == 201, r.text
    assert r.json()["content_type"] == f"image/{fmt.lower()}"


@pytest.mark.parametrize(
    "data",
    [
        b"<html><script>alert(1)</script></html>",
        b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
        b"GIF89a" + b"\x00" * 64,
        b"",
        b"\x89PNG",  # too short to be an image
    ],
    ids=["html", "svg", "gif", "empty", "truncated"],
)
async def test_other_types_are_refused_whatever_the_header(
    deployment: Deployment, data: bytes
) -> None:
    r1 = await deployment.replica("r1")
    headers = await register_and_login(r1, unique("eve"))
    r = await upload(r1, headers, data, "evil.png", "image/png")
    assert r.status_code == 415, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert (await r1.get("/api/files")).json() == {"files": []}
    assert stored_objects(deployment.root / "objects") == []


async def test_oversize_uploads_get_413_and_leave_nothing(deployment: Deployment) -> None:
    limit = 100_000
    r1 = await deployment.replica("r1", max_upload_bytes=limit)
    headers = await register_and_login(r1, unique("oz"))
    # With a Content-Length the middleware refuses before reading.
    r = await upload(r1, headers, PNG + b"\0" * (limit + 70_000))
    assert r.status_code == 413, r.text
    # Streamed without a length: counted while it arrives, refused when it passes.
    form, body = multipart("big.png", repeated(PNG + b"\0" * 4096, limit + 1))
    r = await r1.post("/api/files", content=body, headers={**headers, **form})
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == "application/problem+json"
    # Exactly at the limit is fine.
    form, body = multipart("fits.png", repeated(PNG + b"\0" * 4096, limit))
    r = await r1.post("/api/files", content=body, headers={**headers, **form})
    assert r.status_code == 201, r.text
    assert r.json()["size"] == limit
    assert len(stored_objects(deployment.root / "objects")) == 1


@pytest.mark.parametrize(
    "name",
    ["../../../escape.png", "..\\..\\escape.png", "/etc/escape.png", "a/../../escape.png"],
)
async def test_a_filename_never_reaches_a_path(
    deployment: Deployment, name: str, tmp_path: Path
) -> None:
    r1 = await deployment.replica("r1")
    headers = await register_and_login(r1, unique("pat"))
    r = await upload(r1, headers, PNG, name)
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == "escape.png"  # kept only as a display name
    objects = stored_objects(deployment.root / "objects")
    assert len(objects) == 1
    key = objects[0].relative_to(deployment.root / "objects")
    assert len(key.parts) == 2 and all(c in "0123456789abcdef" for c in key.name)
    assert not any(p.name == "escape.png" for p in tmp_path.parent.rglob("escape.png"))


async def test_download_is_an_attachment_browsers_do_not_sniff(deployment: Deployment) -> None:
    r1 = await deployment.replica("r1")
    headers = await register_and_login(r1, unique("dl"))
    r = await upload(r1, headers, PNG, 'ev"il\r\nX-Injected: 1\u00e9.png')
    assert r.status_code == 201, r.text
    got = await r1.get(f"/api/files/{r.json()['id']}")
    assert got.status_code == 200
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    disposition = got.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "\r" not in disposition and "\n" not in disposition
    assert "X-Injected" not in got.headers
    assert got.headers["Content-Type"] == "image/png"
    assert int(got.headers["Content-Length"]) == len(PNG)


async def test_another_users_file_is_not_found(deployment: Deployment) -> None:
    r1 = await deployment.replica("r1")
    alice = await register_and_login(r1, unique("alice"))
    file_id = (await upload(r1, alice, PNG)).json()["id"]
    r1.cookies.clear()
    bob = await register_and_login(r1, unique("bob"))
    assert (await r1.get(f"/api/files/{file_id}")).status_code == 404
    assert (await r1.delete(f"/api/files/{file_id}", headers=bob)).status_code == 404
    assert (await r1.get("/api/files")).json() == {"files": []}
    assert (await r1.get("/api/files/not-an-id")).status_code == 404


async def test_requests_that_are_not_uploads(deployment: Deployment) -> None:
    r1 = await deployment.replica("r1")
    anonymous = await upload(r1, {}, PNG)
    assert anonymous.status_code == 401
    headers = await register_and_login(r1, unique("ned"))
    no_csrf = await upload(r1, {}, PNG)
    assert no_csrf.status_code == 403
    as_json = await r1.post("/api/files", json={"file": "x"}, headers=headers)
    assert as_json.status_code == 415
    other_field = await r1.post(
        "/api/files", files={"photo": ("a.png", PNG, "image/png")}, headers=headers
    )
    assert other_field.status_code == 400
    broken = await r1.post(
        "/api/files",
        content=b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\n\x89PNG',
        headers={**headers, "Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert broken.status_code == 400
    someone_elses_order = await r1.post(
        "/api/files?order_id=999", files={"file": ("a.png", PNG, "image/png")}, headers=headers
    )
    assert someone_elses_order.status_code == 404


async def test_thumbnail_job_and_delete(deployment: Deployment) -> None:
    r1 = await deployment.replica("r1", place={"jobs": "inprocess"})
    headers = await register_and_login(r1, unique("tom"))
    photo = (await upload(r1, headers, image_bytes("JPEG", (1200, 900)), "big.jpg")).json()
    assert photo["thumbnail"] is None

    async def thumbnail() -> str | None:
        files = (await r1.get("/api/files")).json()["files"]
        return files[0]["thumbnail"]

    thumb_id = await eventually(thumbnail, timeout=20)
    thumb = await r1.get(f"/api/files/{thumb_id}")
    assert thumb.headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(thumb.content)) as img:
        assert max(img.size) == 256 and img.size == (256, 192)
    listed = (await r1.get("/api/files")).json()["files"]
    assert [f["id"] for f in listed] == [photo["id"]]  # thumbnails hang off their photo
    assert (await r1.delete(f"/api/files/{photo['id']}", headers=headers)).status_code == 204
    assert (await r1.get(f"/api/files/{photo['id']}")).status_code == 404
    assert (await r1.get(f"/api/files/{thumb_id}")).status_code == 404
    assert stored_objects(deployment.root / "objects") == []


async def test_a_large_upload_streams_through_without_being_held(
    deployment: Deployment,
) -> None:
    size = 24 * 1024 * 1024
    r1 = await deployment.replica("r1", max_upload_bytes=32 * 1024 * 1024)
    headers = await register_and_login(r1, unique("big"))
    block = PNG + bytes(range(256)) * 256
    form, body = multipart("large.png", repeated(block[: 64 * 1024], size))
    tracemalloc.start()
    try:
        r = await r1.post("/api/files", content=body, headers={**headers, **form}, timeout=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 201, r.text
    assert r.json()["size"] == size
    # Python never held the upload: a few 64 KiB chunks at a time, not 24 MiB.
    assert peak < 4 * 1024 * 1024, f"peak Python memory {peak} bytes"
    got = await r1.get(f"/api/files/{r.json()['id']}")
    assert len(got.content) == size
