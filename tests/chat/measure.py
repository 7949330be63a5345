"""Measure the chat across two real replicas: delivery latency and catch-up after a kill.

    .venv/bin/python -m tests.chat.measure --rate 50 --count 500 --db sqlite
    .venv/bin/python -m tests.chat.measure --rate 200 --count 2000 --db postgres

Starts its own redis-server (and PostgreSQL with ``--db postgres``), two stateless
replicas and HAProxy in a temporary folder, and stops them all at the end.

1. Delivery latency: alice on r1 sends ``count`` messages at ``rate`` per second (on a
   schedule, not waiting for acks); bob on r2 records when each arrives. Reports the
   time from send to bob's receipt (cross-replica: r1 stores in SQL, publishes
   through Redis, r2 delivers) and from send to alice's ack (stored before acked).
2. Reconnect to caught-up: bob on r2 keeps sending at ``rate``; alice listens on r1;
   r1 is killed with SIGKILL; alice notices, reconnects through HAProxy, resumes, and
   is caught up once she has every message stored before she resumed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from statelab.cluster.servers import PostgresServer, RedisServer
from statelab.db.migrate import upgrade
from tests.chat.support import (
    Balancer,
    ChatClient,
    Replica,
    api,
    is_type,
    joined,
    login,
    new_room,
    sqlite_database,
    unique,
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name}: n={len(ms)} p50={percentile(ms, 50):.1f} ms p90={percentile(ms, 90):.1f} ms "
        f"p99={percentile(ms, 99):.1f} ms max={max(ms):.1f} ms"
    )


async def latency(r1: Replica, r2: Replica, rate: float, count: int) -> None:
    alice, bob = await login(r1, unique("alice")), await login(r2, unique("bob"))
    room = await new_room(r1, alice)
    a, b = await joined(r1, alice, room), await joined(r2, bob, room)
    sent: dict[str, float] = {}
    start = time.monotonic()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        cmid = f"m{i}"
        sent[cmid] = time.monotonic()
        await a.send(type="send", room=room, client_msg_id=cmid, text=f"message {i}")
    await b.wait(is_type("message", client_msg_id=f"m{count - 1}"), timeout=120)
    await a.wait(is_type("ack", client_msg_id=f"m{count - 1}"), timeout=120)
    cross = [
        at - sent[f["client_msg_id"]]
        for f, at in zip(b.frames, b.arrived, strict=True)
        if f["type"] == "message"
    ]
    acked = [
        at - sent[f["client_msg_id"]]
        for f, at in zip(a.frames, a.arrived, strict=True)
        if f["type"] == "ack"
    ]
    assert len(cross) == count and b.seqs(room) == list(range(1, count + 1))
    elapsed = time.monotonic() - start
    print(f"delivery at {rate:g} msg/s ({count} messages, achieved {count / elapsed:.0f}/s)")
    print("  " + summary("cross-replica send->receive", cross))
    print("  " + summary("same-replica send->ack    ", acked))
    await a.close()
    await b.close()


async def chatter(client: ChatClient, room: str, rate: float, stop: asyncio.Event) -> None:
    for i in range(100_000):
        if stop.is_set():
            return
        await client.send(type="send", room=room, client_msg_id=f"b{i}", text="hi")
        await asyncio.sleep(1 / rate)


async def failover(r1: Replica, r2: Replica, lb: Balancer, rate: float, rounds: int) -> None:
    results: list[tuple[float, float, float, float]] = []
    for _ in range(rounds):
        if not r1.alive:
            r1.start()
            r1.wait_ready(30)
        alice, bob = await login(r1, unique("alice")), await login(r2, unique("bob"))
        room = await new_room(r1, alice)
        a, b = await joined(r1, alice, room), await joined(r2, bob, room)
        stop = asyncio.Event()
        talking = asyncio.create_task(chatter(b, room, rate, stop))
        await asyncio.sleep(1.0)
        r1.kill9()
        killed = time.monotonic()
        await a.wait_closed()
        noticed = time.monotonic()
        a2 = await ChatClient.open(lb, alice)
        connected = time.monotonic()
        rooms = (await api(lb, alice, "GET", "/api/chat/rooms")).json()["rooms"]
        target = rooms[0]["last_seq"]
        await a2.send(type="resume", rooms={room: a.seqs(room)[-1]})
        await a2.wait(is_type("message", seq=target), timeout=30)
        caught_up = time.monotonic()
        stop.set()
        await talking
        gaps_free = (a.seqs(room) + a2.seqs(room))[:target] == list(range(1, target + 1))
        assert gaps_free, "gap or duplicate after resume"
        results.append(
            (noticed - killed, connected - noticed, caught_up - connected, caught_up - killed)
        )
        for client in (a2, b):
            await client.close()
    print(f"reconnect after kill -9 (bob sending {rate:g} msg/s), {rounds} rounds:")
    for name, index in (("kill->noticed", 0), ("noticed->connected via HAProxy", 1),
                        ("connected->caught up", 2), ("kill->caught up", 3)):  # fmt: skip
        values = [r[index] * 1000 for r in results]
        print(f"  {name}: median {statistics.median(values):.1f} ms, max {max(values):.1f} ms")


async def measure(args: argparse.Namespace, replicas: list[Replica], lb: Balancer) -> None:
    print(f"database: {args.db}; 2 stateless replicas (uvicorn), redis pub/sub")
    await latency(replicas[0], replicas[1], args.rate, args.count)
    await failover(replicas[0], replicas[1], lb, args.rate, args.rounds)


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="statelab-chat-") as tmp:
        run = Path(tmp)
        with RedisServer(run / "redis") as redis_server:
            postgres = PostgresServer(run / "pg", fsync=False) if args.db == "postgres" else None
            if postgres is not None:
                postgres.start()
                postgres.wait_ready()
                database = postgres.create_database("chat")
                upgrade(database)
            else:
                database = sqlite_database(run / "db")
            env = {"STATELAB_CHAT_PRESENCE_TTL_SECONDS": "30"}
            replicas = [
                Replica(run, rid, "stateless", database, redis_server.url, env)
                for rid in ("r1", "r2")
            ]
            lb = Balancer(run, replicas)
            try:
                for replica in replicas:
                    replica.start()
                for replica in replicas:
                    replica.wait_ready(30)
                lb.start()
                lb.wait_ready(15)
                asyncio.run(measure(args, replicas, lb))
            finally:
                for process in (lb, *replicas):
                    process.stop(10)
                if postgres is not None:
                    postgres.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second")
    parser.add_argument("--count", type=int, default=500, help="messages for the latency run")
    parser.add_argument("--rounds", type=int, default=3, help="kill -9 rounds")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    main(parser.parse_args())
