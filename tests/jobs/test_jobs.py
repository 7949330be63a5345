"""Receipts and thumbnails as jobs: in a queue worker process, in the replica, and
what each loses when a process is killed."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

import redis
from statelab.config import build_settings
from statelab.jobs import make_receipt
from statelab.state import keys, open_stores
from tests.files.support import (
    SECRET,
    Deployment,
    eventually,
    http_url,
    image_bytes,
    log_has,
    paid_order,
    replica_process,
    worker_process,
)
from tests.support import register_and_login, unique


def receipt_files(database_url: str) -> list[tuple[str, int | None]]:
    path = database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT id, order_id FROM files WHERE purpose = 'receipt'").fetchall()
    return [(str(r[0]), r[1]) for r in rows]


async def receipt_of(client: httpx.AsyncClient, order_id: int) -> str | None:
    r = await client.get(f"/api/orders/{order_id}")
    assert r.status_code == 200, r.text
    receipt: str | None = r.json()["receipt"]
    return receipt


def objects_env(deployment: Deployment) -> dict[str, str]:
    return {"STATELAB_OBJECT_STORE_URL": (deployment.root / "objects").as_uri()}


@pytest.mark.slow
async def test_worker_makes_receipts_and_thumbnails(
    deployment: Deployment, run_dir: Path, redis_url: str
) -> None:
    worker = worker_process(
        run_dir, "w1", redis_url, deployment.database_url, **objects_env(deployment)
    )
    with worker:
        alive = redis.Redis.from_url(redis_url).get(keys.worker_alive("w1"))
        assert alive is not None and json.loads(alive)["pid"] == worker.pid
        r1 = await deployment.replica("r1")  # stateless: jobs=queue
        headers = await register_and_login(r1, unique("wes"))
        order_id = await paid_order(r1, headers, "1")
        receipt = await eventually(lambda: receipt_of(r1, order_id), timeout=30)
        text = (await r1.get(f"/api/files/{receipt}")).text
        assert f"order {order_id}" in text and "18.00" in text
        assert (await r1.delete(f"/api/files/{receipt}", headers=headers)).status_code == 409

        photo = await r1.post(
            "/api/files",
            files={"file": ("p.webp", image_bytes("WEBP"), "image/webp")},
            headers=headers,
        )
        assert photo.status_code == 201

        async def thumbnail() -> str | None:
            r = await r1.get("/api/files")
            found = {f["id"]: f["thumbnail"] for f in r.json()["files"]}
            return found[photo.json()["id"]]

        thumb = await eventually(thumbnail, timeout=30)
        assert (await r1.get(f"/api/files/{thumb}")).headers["content-type"] == "image/png"
    assert worker.returncode == 0  # stopped by SIGTERM, gracefully
    assert redis.Redis.from_url(redis_url).get(keys.worker_alive("w1")) is None
    assert log_has(worker.log_path, "worker w1 stopped after 2 job(s)")


@pytest.mark.slow
async def test_a_killed_workers_job_is_redelivered_and_done_once(
    deployment: Deployment, run_dir: Path, redis_url: str
) -> None:
    env = objects_env(deployment)
    # w1 stores the receipt, then holds before attaching it: killed right there.
    w1 = worker_process(
        run_dir, "w1", redis_url, deployment.database_url, STATELAB_JOB_HOLD_SECONDS="60", **env
    )
    w2 = worker_process(run_dir, "w2", redis_url, deployment.database_url, **env)
    r1 = await deployment.replica("r1")
    headers = await register_and_login(r1, unique("kim"))
    with w1:
        order_id = await paid_order(r1, headers, "1")
        await eventually(lambda: _async(log_has(w1.log_path, "holding for 60.0 s")), timeout=30)
        assert len(receipt_files(deployment.database_url)) == 1  # stored, not yet attached
        w1.kill(signal.SIGKILL)
        killed_at = time.monotonic()
    assert await receipt_of(r1, order_id) is None
    with w2:
        receipt = await eventually(lambda: receipt_of(r1, order_id), timeout=60)
        redelivered = time.monotonic() - killed_at
        assert log_has(w2.log_path, "job receipt attempt 2")
    print(f"receipt redelivered and attached {redelivered:.1f} s after the kill")
    assert redelivered < 60  # heartbeat 2 s + sweep + retry delay, with room for a slow CI
    files = receipt_files(deployment.database_url)
    assert files == [(receipt, order_id)]  # the second run found the first run's file
    objects = [p for p in (deployment.root / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 1
    text = (await r1.get(f"/api/files/{receipt}")).text
    assert f"order {order_id}" in text


@pytest.mark.slow
async def test_a_killed_replicas_inprocess_job_is_lost_but_a_queued_one_is_not(
    run_dir: Path, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    objects = {"STATELAB_OBJECT_STORE_URL": (tmp_path / "objects").as_uri()}
    hold = {"STATELAB_JOB_HOLD_SECONDS": "60"}
    inproc = replica_process(
        run_dir, "r1", redis_url, sqlite_url, "jobs=inprocess", **hold, **objects
    )
    with inproc:
        async with httpx.AsyncClient(base_url=http_url(inproc)) as client:
            headers = await register_and_login(client, unique("lou"))
            lost = await paid_order(client, headers, "lost")
            await eventually(lambda: _async(log_has(inproc.log_path, "holding")), timeout=30)
        inproc.kill(signal.SIGKILL)

    # A replica with a queue (and a worker) takes over; nothing brings the job back.
    queued = replica_process(run_dir, "r2", redis_url, sqlite_url, **objects)
    worker = worker_process(run_dir, "w1", redis_url, sqlite_url, **objects)
    assert _receipt_in_db_now(sqlite_url, lost) is None
    with queued, worker:
        async with httpx.AsyncClient(base_url=http_url(queued)) as client:
            headers = await register_and_login(client, unique("liz"))
            kept = await paid_order(client, headers, "kept")
        queued.kill(signal.SIGKILL)  # the replica that took this order dies at once too
        receipt = await eventually(lambda: _receipt_in_db(sqlite_url, kept), timeout=60)
    # The queued job outlived its replica; the in-process one died with r1: its order
    # is paid and has no receipt (the file it had stored is attached to nothing).
    assert receipt in [f for f, _ in receipt_files(sqlite_url)]
    assert _receipt_in_db_now(sqlite_url, lost) is None


async def _async(value: object) -> object:
    return value


async def _receipt_in_db(database_url: str, order_id: int) -> str | None:
    return _receipt_in_db_now(database_url, order_id)


def _receipt_in_db_now(database_url: str, order_id: int) -> str | None:
    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
        row = db.execute("SELECT receipt FROM orders WHERE id = ?", (order_id,)).fetchone()
    assert row is not None, f"order {order_id} is missing"
    return None if row[0] is None else str(row[0])


@pytest.mark.parametrize("files", ["disk", "objects"])
async def test_a_receipt_job_run_twice_makes_one_receipt(
    deployment: Deployment, files: str
) -> None:
    place = {"files": files, "jobs": "inprocess"}
    r1 = await deployment.replica("r1", place=place)
    headers = await register_and_login(r1, unique("ida"))
    order_id = await paid_order(r1, headers, "1")
    first = await eventually(lambda: receipt_of(r1, order_id), timeout=20)
    order = (await r1.get(f"/api/orders/{order_id}")).json()
    stores = r1.app.state.stores  # type: ignore[attr-defined]
    user_id = (await r1.get("/api/auth/me")).json()["user_id"]
    # A redelivered job: the same payload again finds the receipt and changes nothing.
    payload = {"order": order, "owner_id": user_id}
    assert await make_receipt(stores, payload) is False
    assert (await receipt_of(r1, order_id)) == first
    listed = (await r1.get("/api/files")).json()["files"]
    assert [f["id"] for f in listed] == [first]


async def test_the_worker_refuses_inprocess_settings(tmp_path: Path, sqlite_url: str) -> None:
    from statelab.config import ConfigError
    from statelab.worker import serve_queue

    settings = build_settings(
        profile="stateful", database_url=sqlite_url, secret_key=SECRET, data_dir=tmp_path
    )
    with pytest.raises(ConfigError, match="jobs=queue"):
        await serve_queue(settings, "w9")
    async with open_stores(settings) as stores:
        assert stores.jobs.name == "inprocess"
