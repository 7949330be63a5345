"""Measurements against a running cluster (``statelab up``), as a client would.

    python -m tests.files.measure uploads --url http://127.0.0.1:8000 [--size-mb 4]
        [--count 40] [--concurrency 4]
    python -m tests.files.measure redelivery --url http://127.0.0.1:8000 --run-dir run
        [--rounds 3]

``uploads`` logs in, uploads ``count`` files of ``size-mb`` each with ``concurrency``
clients and prints the throughput in MB/s (1 MB = 10^6 bytes) plus latency
percentiles. ``redelivery`` needs a cluster started with jobs=queue, two or more
workers and ``STATELAB_JOB_HOLD_SECONDS`` set (say 10): it pays an order, waits
until a worker holds its receipt job, kills that worker with ``statelab cluster
kill`` and times how long until another worker starts the job again (its
"attempt 2" log line). Every loop is bounded; traffic goes to loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.files.support import image_bytes, multipart, paid_order
from tests.support import register_and_login, unique

WAIT_LIMIT = 120.0


async def _upload_one(client: httpx.AsyncClient, headers: dict[str, str], payload: bytes) -> float:
    chunks = [payload[i : i + 65536] for i in range(0, len(payload), 65536)]
    form, body = multipart("bench.png", chunks)
    started = time.perf_counter()
    r = await client.post("/api/files", content=body, headers={**headers, **form}, timeout=120)
    elapsed = time.perf_counter() - started
    if r.status_code != 201:
        raise SystemExit(f"upload failed: {r.status_code} {r.text[:200]}")
    return elapsed


async def uploads(url: str, size_mb: float, count: int, concurrency: int) -> None:
    size = int(size_mb * 1_000_000)
    head = image_bytes("PNG", (8, 8))
    payload = head + os.urandom(size - len(head))  # a PNG signature, then noise
    clients = [httpx.AsyncClient(base_url=url) for _ in range(concurrency)]
    try:
        headers = [await register_and_login(c, unique("bench")) for c in clients]
        await _upload_one(clients[0], headers[0], payload)  # warm-up, not counted
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(count):
            queue.put_nowait(i)
        latencies: list[float] = []

        async def run(index: int) -> None:
            while not queue.empty():
                queue.get_nowait()
                latencies.append(await _upload_one(clients[index], headers[index], payload))

        started = time.perf_counter()
        await asyncio.gather(*(run(i) for i in range(concurrency)))
        wall = time.perf_counter() - started
    finally:
        for c in clients:
            await c.aclose()
    latencies.sort()
    total_mb = count * size / 1_000_000
    print(f"{count} uploads of {size_mb} MB, {concurrency} clients, {url}")
    print(f"  throughput {total_mb / wall:.1f} MB/s ({total_mb:.0f} MB in {wall:.2f} s)")
    print(
        f"  latency p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )


def _log(run_dir: Path, name: str) -> str:
    try:
        return (run_dir / "logs" / f"{name}.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _workers(run_dir: Path) -> list[str]:
    return sorted(p.stem for p in (run_dir / "logs").glob("w*.log"))


async def _wait(predicate: object, what: str) -> float:
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise SystemExit(f"gave up waiting for {what}")


async def _wait_receipt(client: httpx.AsyncClient, order_id: int) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        r = await client.get(f"/api/orders/{order_id}")
        if r.status_code == 200 and r.json()["receipt"] is not None:
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"order {order_id} got no receipt")


async def redelivery(url: str, run_dir: Path, rounds: int) -> None:
    delays = []
    async with httpx.AsyncClient(base_url=url) as client:
        headers = await register_and_login(client, unique("redeliver"))
        for n in range(rounds):
            before = {w: _log(run_dir, w).count("job receipt attempt 2") for w in _workers(run_dir)}
            holding_before = {w: _log(run_dir, w).count("holding") for w in _workers(run_dir)}
            order_id = await paid_order(client, headers, f"{time.time_ns()}-{n}")

            def holder(seen: dict[str, int] = holding_before) -> str | None:
                for w in _workers(run_dir):
                    if _log(run_dir, w).count("holding") > seen.get(w, 0):
                        return w
                return None

            await _wait(holder, "a worker to take the receipt job")
            victim = holder()
            assert victim is not None
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "statelab",
                    "cluster",
                    "kill",
                    victim,
                    "--run-dir",
                    str(run_dir),
                ],
                check=True,
                capture_output=True,
            )
            killed = time.monotonic()

            def redelivered(seen: dict[str, int] = before, dead: str = victim) -> bool:
                return any(
                    _log(run_dir, w).count("job receipt attempt 2") > seen.get(w, 0)
                    for w in _workers(run_dir)
                    if w != dead
                )

            again = await _wait(redelivered, "the job to be redelivered")
            delays.append(again - killed)
            print(f"round {n + 1}: killed {victim}, job started again {delays[-1]:.1f} s later")
            # Let the redelivered run finish, so the next round finds a worker free.
            await _wait_receipt(client, order_id)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "statelab",
                    "cluster",
                    "start",
                    victim,
                    "--run-dir",
                    str(run_dir),
                ],
                check=True,
                capture_output=True,
            )
    print(
        f"redelivery after a worker kill: median {statistics.median(delays):.1f} s, "
        f"max {max(delays):.1f} s over {rounds} rounds"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.files.measure")
    sub = parser.add_subparsers(dest="what", required=True)
    up = sub.add_parser("uploads")
    up.add_argument("--url", required=True)
    up.add_argument("--size-mb", type=float, default=4.0)
    up.add_argument("--count", type=int, default=40)
    up.add_argument("--concurrency", type=int, default=4)
    re = sub.add_parser("redelivery")
    re.add_argument("--url", required=True)
    re.add_argument("--run-dir", type=Path, required=True)
    re.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.what == "uploads":
        asyncio.run(uploads(args.url, args.size_mb, args.count, args.concurrency))
    else:
        asyncio.run(redelivery(args.url, args.run_dir.resolve(), args.rounds))


if __name__ == "__main__":
    main()
