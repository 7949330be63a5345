"""Measure the replicated ledger's log: how fast a starting copy replays it, what it
costs Redis, and how long a write through one copy takes to reach another.

    .venv/bin/python -m tests.state.measure_replicated_ledger --entries 100000

Starts its own redis-server (append-only file on) in a temporary folder and stops it
at the end.

1. Replay: ``entries`` top-ups (of 1000 users, each with its own key) are appended
   through the appending script, pipelined; then a fresh copy starts and the time
   until it reports ready is taken, with the log's memory in Redis per entry.
2. Write and lag: one copy writes ``writes`` top-ups one after another; for each,
   the time until the writer's answer, and from then until a second copy has
   applied it too.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from statelab.cluster.servers import RedisServer
from statelab.state import keys, make_redis
from statelab.state.ledger import Idempotency
from statelab.state.replicated_ledger import APPEND, TopUp
from tests.state.support import replicated_copy

PIPELINE = 1000


async def fill(url: str, entries: int) -> None:
    """Append ``entries`` top-ups, in pipelines of ``PIPELINE`` script calls."""
    client = make_redis(url)
    try:
        sha = await client.script_load(APPEND.body)
        for start in range(0, entries, PIPELINE):
            pipe = client.pipeline(transaction=False)
            for n in range(start, min(entries, start + PIPELINE)):
                command = TopUp(id=f"fill{n}", user=n % 1000, key=f"k{n}", fp="f", amount=1)
                pipe.evalsha(sha, 1, keys.ledger_log(), command.model_dump_json())
            await pipe.execute()
    finally:
        await client.aclose()


async def replay_seconds(url: str) -> tuple[float, int]:
    """Seconds until a fresh copy has replayed the log; the entries it applied."""
    started = time.perf_counter()
    async with replicated_copy(url, 24 * 3600, 10**7, wait=600) as ledger:
        await ledger.balance(0)  # waits for the replay
        return time.perf_counter() - started, ledger.applied


async def write_and_lag(url: str, writes: int) -> tuple[list[float], list[float]]:
    """Milliseconds to each write's answer through one copy, and from that answer
    until another copy has applied it too (0 when it already had)."""
    answers, lags = [], []
    async with (
        replicated_copy(url, 3600, 10**6, wait=600) as writer,
        replicated_copy(url, 3600, 10**6, wait=600) as reader,
    ):
        for n in range(writes):
            began = time.perf_counter()
            await writer.top_up(424242, 1, Idempotency(f"w{n}", "f"))
            answered = time.perf_counter()
            while reader.position != writer.position:
                await asyncio.sleep(0)
            answers.append((answered - began) * 1000)
            lags.append((time.perf_counter() - answered) * 1000)
    return answers, lags


def _quantiles(values: list[float]) -> str:
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {cuts[49]:.2f} ms, p99 {cuts[98]:.2f} ms"


async def measure(url: str, entries: int, writes: int) -> None:
    began = time.perf_counter()
    await fill(url, entries)
    print(f"appended {entries} entries in {time.perf_counter() - began:.1f} s")
    client = make_redis(url)
    try:
        used = await client.memory_usage(keys.ledger_log(), samples=0) or 0
    finally:
        await client.aclose()
    print(f"log in Redis: {used / 2**20:.1f} MiB, {used / entries:.0f} bytes per entry")
    seconds, applied = await replay_seconds(url)
    print(f"replayed {applied} entries in {seconds:.2f} s: {applied / seconds:,.0f} per second")
    answers, lags = await write_and_lag(url, writes)
    print(f"write answered: {_quantiles(answers)}; the other copy behind: {_quantiles(lags)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--writes", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, RedisServer(Path(folder)) as server:
        asyncio.run(measure(server.url, args.entries, args.writes))


if __name__ == "__main__":
    main()
