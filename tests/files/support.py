"""Helpers for the upload and job tests: images, multipart bodies, in-process
replicas of one deployment, and real ``statelab serve`` / ``statelab worker``
processes.

Used by ``tests/files``, ``tests/jobs`` and ``python -m tests.files.measure``.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from statelab.cluster.servers import ManagedProcess, PortedProcess
from statelab.config import build_settings
from statelab.web.app import create_app
from tests.support import PROCESS_ENV, answers_ok

SECRET = "files-tests-a0519a8a20f8eb737ae4eb6fa49eedc1d2f35c6991fe226902c37743588f3322"

#: Settings every test process gets: the shared ones and fast job recovery.
BASE_ENV = {
    **PROCESS_ENV,
    "STATELAB_SECRET_KEY": SECRET,
    "STATELAB_JOB_HEARTBEAT_SECONDS": "2",
}


# ------------------------------------------------------------------------ images


def image_bytes(fmt: str, size: tuple[int, int] = (640, 480)) -> bytes:
    """A real image in ``fmt`` (PNG, JPEG, WEBP), with some detail to compress."""
    img = Image.new("RGB", size, (30, 120, 200))
    for x in range(0, size[0], 16):
        img.paste((x % 255, 80, 160), (x, 0, x + 8, size[1]))
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def multipart(
    filename: str, chunks: list[bytes] | AsyncIterator[bytes], content_type: str = "image/png"
) -> tuple[dict[str, str], AsyncIterator[bytes]]:
    """A streamed ``multipart/form-data`` body with one ``file`` part: (headers, body)."""
    boundary = secrets.token_hex(12)
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    async def body() -> AsyncIterator[bytes]:
        yield head
        if isinstance(chunks, list):
            for chunk in chunks:
                yield chunk
        else:
            async for chunk in chunks:
                yield chunk
        yield tail

    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body()


async def repeated(block: bytes, total: int) -> AsyncIterator[bytes]:
    """``total`` bytes made of ``block`` repeated, produced as they are sent."""
    sent = 0
    while sent < total:
        piece = block[: total - sent]
        sent += len(piece)
        yield piece


# --------------------------------------------------------------------- accounts


async def paid_order(client: httpx.AsyncClient, headers: dict[str, str], tag: str) -> int:
    """Top up, fill the cart and check out; returns the order id."""
    r = await client.post(
        "/api/account/top-up",
        json={"amount_cents": 10_000},
        headers={**headers, "Idempotency-Key": f"top-{tag}"},
    )
    assert r.status_code == 200, r.text
    r = await client.post("/api/cart/items", json={"item_id": 1, "quantity": 2}, headers=headers)
    assert r.status_code == 200, r.text
    r = await client.post(
        "/api/checkout",
        json={"expected_total_cents": 1800},
        headers={**headers, "Idempotency-Key": f"pay-{tag}"},
    )
    assert r.status_code == 201, r.text
    order_id: int = r.json()["id"]
    return order_id


async def eventually(
    probe: Callable[[], Awaitable[Any]], *, timeout: float, every: float = 0.1
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {probe}")
        await asyncio.sleep(every)


# ------------------------------------------------------- in-process replicas


class Deployment:
    """In-process replicas of one deployment: one SQLite database, one Redis, one
    object-store root, and a data folder per replica."""

    def __init__(
        self, stack: AsyncExitStack, root: Path, redis_url: str, database_url: str
    ) -> None:
        self._stack = stack
        self.root = root
        self.database_url = database_url
        self.base: dict[str, Any] = {
            "redis_url": redis_url,
            "database_url": database_url,
            "secret_key": SECRET,
            "object_store_url": (root / "objects").as_uri(),
            "argon2_time_cost": 1,
            "argon2_memory_kib": 1024,
            "job_heartbeat_seconds": 2,
        }

    async def replica(
        self, replica_id: str, profile: str = "stateless", **overrides: Any
    ) -> httpx.AsyncClient:
        """A new replica and a client talking to it."""
        settings = build_settings(
            **{
                **self.base,
                "profile": profile,
                "replica_id": replica_id,
                "data_dir": self.root / replica_id,
                **overrides,
            }
        )
        app = create_app(settings)
        await self._stack.enter_async_context(app.router.lifespan_context(app))
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )
        client.app = app  # type: ignore[attr-defined]
        return await self._stack.enter_async_context(client)


# ------------------------------------------------------------------ processes


def statelab(*args: str) -> list[str]:
    return [sys.executable, "-m", "statelab", *args]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, **BASE_ENV, **extra}


def log_has(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except FileNotFoundError:
        return False


def worker_process(
    run_dir: Path, worker_id: str, redis_url: str, database_url: str, **extra_env: str
) -> ManagedProcess:
    """``statelab worker`` as a supervisor would start it; ready at its log line."""
    log = run_dir.resolve() / "logs" / f"{worker_id}.log"  # where ManagedProcess logs
    return ManagedProcess(
        worker_id,
        run_dir,
        statelab(
            "worker",
            "--worker-id",
            worker_id,
            "--redis-url",
            redis_url,
            "--database-url",
            database_url,
        ),
        env=env(STATELAB_DATA_DIR=str(run_dir / worker_id), **extra_env),
        ready=lambda: log_has(log, f"worker {worker_id} ready"),
    )


def replica_process(
    run_dir: Path,
    replica_id: str,
    redis_url: str,
    database_url: str,
    *place: str,
    profile: str = "stateless",
    **extra_env: str,
) -> PortedProcess:
    """``statelab serve`` on a port of its own (``http_url``, once it started); ready
    when ``/readyz`` answers 200."""
    argv = ["serve", "--profile", profile, "--replica-id", replica_id]
    argv += ["--redis-url", redis_url, "--database-url", database_url]
    for p in place:
        argv += ["--place", p]
    return PortedProcess(
        replica_id,
        run_dir,
        lambda port: statelab(*argv, "--port", str(port)),
        env=env(STATELAB_DATA_DIR=str(run_dir / replica_id), **extra_env),
        ready=lambda port: answers_ok(f"http://127.0.0.1:{port}/readyz"),
    )


def http_url(process: PortedProcess) -> str:
    """Where ``process`` serves HTTP (its port may change until it has started)."""
    return f"http://{process.address}"
