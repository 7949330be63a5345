"""The chat workload of ``statelab bench``: messages per second across two replicas.

``measure`` starts what it needs in a temporary folder (Redis, PostgreSQL or a SQLite
file, two stateless replicas; or uses the Redis and database URLs it is given),
then offers messages at a fixed rate for a fixed time, open loop: message ``i``
leaves at ``start + i / rate`` whatever the answers, so a slow server shows as
latency and a shortfall, not as a politely slower client.

Who talks. ``senders`` users, each on one socket, half on each replica; each sender
is a member of its rooms (joined over HTTP) but follows none, so it receives only its
acks. Two receivers, one per replica, follow every room. The messages take turns
through a fixed list of (sender, room) pairs that gives every room a sender and every
sender a room (``pairs``). One hot room (``rooms=1``) and many rooms are separate runs.

What is measured, from the intended send time (so a lagging generator counts
against the server, never for it): the ack (stored and acknowledged, on the sender's
replica) and the delivery to the receiver on the *other* replica (stored, published
through Redis, fanned out there). Then every receiver's sequence of every room is
checked: a missing number, or an acknowledged message that never arrived, is a gap.
CPU time of the replicas, of the stores this module started (from ``/proc``) and of
this process give microseconds per message: the generator's own share shows whether
it could offer more. The replicas' ``/metrics`` give SQL statements per message.

``python -m statelab.lab.chatload --db postgres --rooms 1`` prints one run;
``python -m statelab.lab.chatload echo`` measures what the generator alone can
offer, against a trivial echo server in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import httpx
import orjson
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from statelab.cluster.members import Replica, proc_usage, statelab_command
from statelab.cluster.servers import (
    LOOPBACK,
    ManagedProcess,
    PortedProcess,
    PostgresServer,
    RedisServer,
    port_is_free,
)
from statelab.db.migrate import upgrade

DATABASES = ("sqlite", "postgres")
#: Seconds of load before the measured window: pools fill, caches warm.
WARMUP_SECONDS = 1.0
#: How long, after the last send, answers may take to come in before they count as lost.
DRAIN_SECONDS = 15.0
PASSWORD = "chatload-password-1"

#: Called once everything runs, with each process's PID (``r1``, ``r2``, ``redis``,
#: ``postgres``): a bench can pin them to cores.
OnStarted = Callable[[dict[str, int]], None]


class ChatLoad(TypedDict):
    """One run's result."""

    database: str
    rooms: int
    senders: int
    seconds: float
    offered_per_second: float
    msgs_per_second: float  # acknowledged per second over the measured window
    ack_p50_ms: float
    ack_p99_ms: float
    delivery_p50_ms: float
    delivery_p99_ms: float  # to the receiver on the other replica
    sent: int
    acked: int
    gaps: int  # missing sequence numbers and acknowledged messages never delivered
    duplicates: int
    errors: int  # error frames and sends never acknowledged
    replica_cpu_us_per_message: float  # both replicas, per acknowledged message
    stores_cpu_us_per_message: float  # Redis and PostgreSQL, when started here
    sql_statements_per_message: float  # both replicas: what group commit saves
    generator_cpu_us_per_message: float
    generator_lag_p99_ms: float  # how late the generator sent, against its schedule


# ----------------------------------------------------------------------------- plan


def pairs(senders: int, rooms: int) -> list[tuple[int, int]]:
    """(sender, room) pairs, used in turn: every room has a sender, every sender a room."""
    return [(i % senders, i % rooms) for i in range(max(senders, rooms))]


@dataclass
class Socket:
    """One WebSocket of the generator and what it heard, with arrival times."""

    ws: ClientConnection
    acks: dict[str, tuple[float, int]] = field(default_factory=dict)  # id -> (at, seq)
    received: dict[str, list[tuple[int, str, float]]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    joined: set[str] = field(default_factory=set)  # rooms whose join was answered
    _reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                at = time.perf_counter()
                frame = orjson.loads(raw)
                kind = frame.get("type")
                if kind == "ack":
                    self.acks[frame["client_msg_id"]] = (at, int(frame["seq"]))
                elif kind == "message":
                    by_room = self.received.setdefault(frame["room"], [])
                    by_room.append((int(frame["seq"]), frame["client_msg_id"], at))
                elif kind == "unread":
                    self.joined.add(frame["room"])
                elif kind == "error":
                    self.errors.append(frame)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


@dataclass
class Setup:
    """Open sockets and rooms, ready to drive. ``side[s]`` is the replica (0 or 1) of
    sender ``s``; ``receivers[k]`` is the receiver on replica ``k``."""

    senders: list[Socket]
    side: list[int]
    receivers: list[Socket]
    rooms: list[str]


@dataclass
class Schedule:
    rate: float
    seconds: float
    pairs: list[tuple[int, int]]
    sent: dict[str, float] = field(default_factory=dict)  # id -> intended send time
    lag: list[float] = field(default_factory=list)
    measured_from: float = 0.0  # intended time of the first measured message

    def sender_of(self, cmid: str) -> int:
        """Message ``m{i}`` went through pair ``i % len(pairs)``."""
        return self.pairs[int(cmid[1:]) % len(self.pairs)][0]


async def drive(setup: Setup, schedule: Schedule) -> None:
    """Send on schedule (warm-up included), then wait for the answers to come in."""
    total = int((WARMUP_SECONDS + schedule.seconds) * schedule.rate)
    start = time.perf_counter() + 0.05
    schedule.measured_from = start + WARMUP_SECONDS
    for i in range(total):
        due = start + i / schedule.rate
        delay = due - time.perf_counter()
        if delay > 0.0005:  # otherwise it is due: send, and catch up with the schedule
            await asyncio.sleep(delay)
        sender, room = schedule.pairs[i % len(schedule.pairs)]
        cmid = f"m{i}"
        schedule.sent[cmid] = due
        schedule.lag.append(time.perf_counter() - due)
        frame = {"type": "send", "room": setup.rooms[room], "client_msg_id": cmid, "text": "hi"}
        await setup.senders[sender].send(frame)
    await _drain(setup, schedule)


async def _drain(setup: Setup, schedule: Schedule) -> None:
    deadline = time.perf_counter() + DRAIN_SECONDS
    while time.perf_counter() < deadline:
        acked = sum(len(s.acks) for s in setup.senders)
        heard = [sum(len(v) for v in r.received.values()) for r in setup.receivers]
        if acked >= len(schedule.sent) and min(heard) >= acked:
            return
        await asyncio.sleep(0.05)


# -------------------------------------------------------------------------- results


def _p(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))], 2)


def sequence_faults(setup: Setup) -> tuple[int, int]:
    """(gaps, duplicates) over every receiver and room: each receiver joined before
    the first send, so it must hold every acknowledged message of every room once,
    numbered 1, 2, 3... without a hole."""
    acked = {cmid for sender in setup.senders for cmid in sender.acks}
    gaps = duplicates = 0
    for receiver in setup.receivers:
        heard: set[str] = set()
        for frames in receiver.received.values():
            seqs = {seq for seq, _, _ in frames}
            duplicates += len(frames) - len(seqs)
            gaps += max(seqs, default=0) - len(seqs)  # holes below the highest
            heard.update(cmid for _, cmid, _ in frames)
        gaps += len(acked - heard)  # acknowledged, never delivered here
    return gaps, duplicates


def summarize(setup: Setup, schedule: Schedule, database: str) -> ChatLoad:
    """The result of a driven run (CPU figures are filled in by the caller)."""
    start = schedule.measured_from
    measured = {c for c, due in schedule.sent.items() if due >= start}
    acks = {c: a for s in setup.senders for c, a in s.acks.items()}
    ack_ms = [(acks[c][0] - schedule.sent[c]) * 1000 for c in measured if c in acks]
    delivery_ms = [
        (at - schedule.sent[cmid]) * 1000
        for k, receiver in enumerate(setup.receivers)
        for frames in receiver.received.values()
        for _, cmid, at in frames
        if cmid in measured and setup.side[schedule.sender_of(cmid)] != k
    ]
    last_ack = max((acks[c][0] for c in measured if c in acks), default=start)
    acked_measured = sum(1 for c in measured if c in acks)
    gaps, duplicates = sequence_faults(setup)
    errors = sum(len(s.errors) for s in setup.senders) + len(schedule.sent) - len(acks)
    lag = schedule.lag[int(WARMUP_SECONDS * schedule.rate) :]
    return ChatLoad(
        database=database,
        rooms=len(setup.rooms),
        senders=len(setup.senders),
        seconds=schedule.seconds,
        offered_per_second=round(len(measured) / schedule.seconds, 1),
        msgs_per_second=round(acked_measured / max(last_ack - start, 1e-9), 1),
        ack_p50_ms=_p(ack_ms, 50),
        ack_p99_ms=_p(ack_ms, 99),
        delivery_p50_ms=_p(delivery_ms, 50),
        delivery_p99_ms=_p(delivery_ms, 99),
        sent=len(schedule.sent),
        acked=len(acks),
        gaps=gaps,
        duplicates=duplicates,
        errors=errors,
        replica_cpu_us_per_message=0.0,
        stores_cpu_us_per_message=0.0,
        sql_statements_per_message=0.0,
        generator_cpu_us_per_message=0.0,
        generator_lag_p99_ms=_p([x * 1000 for x in lag], 99),
    )


# ---------------------------------------------------------------------------- setup


async def _login(url: str, username: str) -> dict[str, str]:
    """Register and log in; the headers that carry the session (cookie and CSRF)."""
    creds = {"username": username, "password": PASSWORD}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        await http.post("/api/auth/register", json=creds)
        r = await http.post("/api/auth/login", json=creds)
        r.raise_for_status()
        cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        return {"Cookie": cookie, "X-CSRF-Token": r.json()["csrf_token"]}


async def _post(url: str, who: dict[str, str], path: str, body: Any = None) -> Any:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.post(path, json=body, headers=who)
        r.raise_for_status()
        return r.json()


async def _socket(url: str, who: dict[str, str] | None = None) -> Socket:
    ws_url = url.replace("http://", "ws://") + "/ws/chat"
    headers = {"Cookie": who["Cookie"]} if who else {}
    socket = Socket(await connect(ws_url, additional_headers=headers, open_timeout=30))
    socket.start()
    return socket


async def follow(socket: Socket, rooms: list[str]) -> None:
    """Join ``rooms`` on the socket; the server answers each join with ``unread``."""
    for room in rooms:
        await socket.send({"type": "join", "room": room})
    deadline = time.monotonic() + 60
    while not set(rooms) <= socket.joined:
        if socket.errors or time.monotonic() > deadline:
            raise RuntimeError(f"joining the load's rooms failed: {socket.errors[:3]}")
        await asyncio.sleep(0.02)


async def setup_replicas(urls: list[str], senders: int, rooms: int) -> Setup:
    """Users, rooms and sockets on two replicas (``urls``), as the module says."""
    tag = secrets.token_hex(3)
    heads = [await _login(urls[k], f"load{tag}r{k}") for k in (0, 1)]
    users = [await _login(urls[s % 2], f"load{tag}s{s}") for s in range(senders)]
    room_ids = [
        str((await _post(urls[0], heads[0], "/api/chat/rooms", {"name": f"load {r}"}))["id"])
        for r in range(rooms)
    ]
    for room in room_ids:
        await _post(urls[1], heads[1], f"/api/chat/rooms/{room}/join")
    for s, r in pairs(senders, rooms):
        await _post(urls[s % 2], users[s], f"/api/chat/rooms/{room_ids[r]}/join")
    receivers = [await _socket(urls[k], heads[k]) for k in (0, 1)]
    for receiver in receivers:
        await follow(receiver, room_ids)
    talkers = [await _socket(urls[s % 2], users[s]) for s in range(senders)]
    return Setup(talkers, [s % 2 for s in range(senders)], receivers, room_ids)


async def close_all(setup: Setup) -> None:
    for socket in [*setup.senders, *setup.receivers]:
        await socket.close()


# ------------------------------------------------------------------------ processes


def replica_env(run_dir: Path, redis_url: str, database_url: str, rooms: int) -> dict[str, str]:
    """Settings of the load's replicas: the defaults, except limits a load would trip
    (per-socket frame rate, rooms per user, logins from one address) and a cheap
    password hash (the users log in once, outside the measurement)."""
    return {
        **os.environ,
        "STATELAB_REDIS_URL": redis_url,
        "STATELAB_DATABASE_URL": database_url,
        "STATELAB_SECRET_KEY": secrets.token_hex(32),
        "STATELAB_CHAT_FRAMES_PER_SECOND": "100000",
        "STATELAB_CHAT_FRAME_BURST": "100000",
        "STATELAB_CHAT_ROOMS_PER_USER": str(max(50, rooms)),
        "STATELAB_LOGIN_LIMIT_PER_ADDRESS": "100000",
        "STATELAB_REGISTER_LIMIT_PER_ADDRESS": "100000",
        "STATELAB_ARGON2_TIME_COST": "1",
        "STATELAB_ARGON2_MEMORY_KIB": "1024",
        "STATELAB_DATA_DIR": str(run_dir / "data"),
    }


@contextmanager
def deployment(
    run_dir: Path, database: str, redis_url: str | None, database_url: str | None, rooms: int
) -> Iterator[tuple[list[Replica], dict[str, int]]]:
    """Redis and the database (unless given), migrated, and two stateless replicas."""
    with ExitStack() as stack:
        pids: dict[str, int] = {}
        if redis_url is None:
            redis = stack.enter_context(RedisServer(run_dir / "redis"))
            redis_url, pids["redis"] = redis.url, _pid(redis)
        if database_url is None:
            database_url = _database(stack, run_dir, database, pids)
        upgrade(database_url)
        env = replica_env(run_dir, redis_url, database_url, rooms)
        argv = [*statelab_command(), "serve", "--profile", "stateless"]
        replicas = [
            Replica(rid, run_dir, [*argv, "--replica-id", rid], env) for rid in ("r1", "r2")
        ]
        for replica in replicas:
            stack.callback(replica.stop)
            replica.start()
        for replica in replicas:
            replica.wait_ready(60)
            pids[replica.name] = _pid(replica)
        yield replicas, pids


def _database(stack: ExitStack, run_dir: Path, database: str, pids: dict[str, int]) -> str:
    if database == "sqlite":
        return f"sqlite:///{run_dir / 'chat.db'}"
    postgres = PostgresServer(run_dir / "pg")  # fsync on: commits cost what they cost
    stack.callback(postgres.stop)
    postgres.start()
    postgres.wait_ready()
    pids["postgres"] = _pid(postgres)
    return postgres.create_database("chatload")


def _pid(process: ManagedProcess) -> int:
    assert process.pid is not None, f"{process.name} has no PID"
    return process.pid


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time of these processes and of their children (PostgreSQL's backends)."""
    family = [*pids, *(child for pid in pids for child in _children(pid))]
    return sum(proc_usage(pid)["cpu_seconds"] or 0.0 for pid in family)


def _children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # After the ")" closing the name: the state, then the parent's PID.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(stat.parent.name))
    return found


# ------------------------------------------------------------------------- measure


def measure(
    database: str,
    seconds: float,
    rooms: int,
    *,
    rate: float = 600.0,
    senders: int = 16,
    redis_url: str | None = None,
    database_url: str | None = None,
    on_started: OnStarted | None = None,
) -> ChatLoad:
    """Offer ``rate`` messages per second for ``seconds`` (after a warm-up) over
    ``rooms`` rooms across two replicas on ``database`` ("sqlite" or "postgres")."""
    if database not in DATABASES:
        raise ValueError(f"database must be one of {DATABASES}, not {database!r}")
    with (
        tempfile.TemporaryDirectory(prefix="statelab-chatload-") as tmp,
        deployment(Path(tmp), database, redis_url, database_url, rooms) as (replicas, pids),
    ):
        if on_started is not None:
            on_started(dict(pids))
        watched = Watched(
            servers=[pids[r.name] for r in replicas],
            stores=[pids[name] for name in ("redis", "postgres") if name in pids],
            urls=[f"http://{r.address}" for r in replicas],
        )

        async def play() -> ChatLoad:
            setup = await setup_replicas(watched.urls, senders, rooms)
            return await load(
                setup, Schedule(rate, seconds, pairs(senders, rooms)), database, watched
            )

        return _run(play())


@dataclass(frozen=True)
class Watched:
    """Whose CPU time is read (PIDs) and whose ``/metrics`` (replica URLs)."""

    servers: list[int]
    stores: list[int]
    urls: list[str]


async def load(setup: Setup, schedule: Schedule, database: str, watched: Watched) -> ChatLoad:
    """Drive ``setup`` on ``schedule`` and sum it up, with CPU time and SQL statements
    per message."""
    statements = await _sql_statements(watched.urls)
    before = [_cpu_seconds(watched.servers), _cpu_seconds(watched.stores), time.process_time()]
    try:
        await drive(setup, schedule)
    finally:
        after = [_cpu_seconds(watched.servers), _cpu_seconds(watched.stores), time.process_time()]
        await close_all(setup)
    statements = await _sql_statements(watched.urls) - statements
    servers, stores, own = (b - a for a, b in zip(before, after, strict=True))
    result = summarize(setup, schedule, database)
    acked, sent = max(1, result["acked"]), max(1, result["sent"])
    result["replica_cpu_us_per_message"] = round(servers / acked * 1e6, 1)
    result["stores_cpu_us_per_message"] = round(stores / acked * 1e6, 1)
    result["sql_statements_per_message"] = round(statements / acked, 2)
    result["generator_cpu_us_per_message"] = round(own / sent * 1e6, 1)
    return result


_SQL_CALLS = re.compile(r'^statelab_store_calls_total\{[^}]*store="sql"[^}]*\} ([\d.e+]+)$', re.M)


async def _sql_statements(urls: list[str]) -> float:
    """SQL statements the replicas have sent so far (from their ``/metrics``)."""
    total = 0.0
    async with httpx.AsyncClient(timeout=10) as http:
        for url in urls:
            found = _SQL_CALLS.search((await http.get(f"{url}/metrics")).text)
            total += float(found.group(1)) if found else 0.0
    return total


def _run(work: Coroutine[Any, Any, ChatLoad]) -> ChatLoad:
    """Run the load on uvloop: the cheaper event loop (it comes with the server)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(work)


# ------------------------------------------------------------------- the echo server


def echo_capacity(rate: float, seconds: float, rooms: int = 1, senders: int = 16) -> ChatLoad:
    """What the generator offers against a trivial echo server (``serve_echo``) in a
    process of its own: the generator's CPU per message says how far it could go."""
    with tempfile.TemporaryDirectory(prefix="statelab-chatecho-") as tmp:
        argv = [sys.executable, "-m", "statelab.lab.chatload", "echo-server", "--port"]
        server = PortedProcess(
            "chat-echo", Path(tmp), lambda port: [*argv, str(port)], ready=port_is_taken
        )
        with server:
            url = f"http://{server.address}"

            async def play() -> ChatLoad:
                setup = await setup_echo(url, senders, rooms)
                schedule = Schedule(rate, seconds, pairs(senders, rooms))
                watched = Watched(servers=[_pid(server)], stores=[], urls=[])
                return await load(setup, schedule, "none (echo)", watched)

            return _run(play())


def port_is_taken(port: int) -> bool:
    """The echo server is ready once its port is taken (it has nothing else to say)."""
    return not port_is_free(port)


async def setup_echo(url: str, senders: int, rooms: int) -> Setup:
    """The shape of ``setup_replicas`` on the echo server: no accounts, rooms by name."""
    room_ids = [f"room{r}" for r in range(rooms)]
    receivers = [await _socket(url) for _ in (0, 1)]
    for receiver in receivers:
        await follow(receiver, room_ids)
    talkers = [await _socket(url) for _ in range(senders)]
    return Setup(talkers, [s % 2 for s in range(senders)], receivers, room_ids)


async def serve_echo(port: int) -> None:
    """A chat server that does nothing else: ``join`` is answered with ``unread``,
    ``send`` with an ack and the message, numbered per room, to the room's followers."""
    followers: dict[str, list[ServerConnection]] = {}
    seqs: dict[str, int] = {}

    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            frame = orjson.loads(raw)
            room = frame["room"]
            if frame["type"] == "join":
                followers.setdefault(room, []).append(ws)
                await ws.send(orjson.dumps({"type": "unread", "room": room, "count": 0}).decode())
                continue
            seqs[room] = seq = seqs.get(room, 0) + 1
            cmid = frame["client_msg_id"]
            ack = {"type": "ack", "room": room, "seq": seq, "client_msg_id": cmid}
            await ws.send(orjson.dumps(ack).decode())
            message = {**ack, "type": "message", "sender": "echo", "text": frame["text"]}
            text = orjson.dumps(message).decode()
            for follower in followers.get(room, []):
                await follower.send(text)

    async with serve(handler, LOOPBACK, port):
        await asyncio.Future()


# ------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m statelab.lab.chatload")
    parser.add_argument(
        "what",
        nargs="?",
        choices=("replicas", "echo", "echo-server"),
        default="replicas",
        help="what to load (echo-server: run the echo)",
    )
    parser.add_argument("--db", choices=DATABASES, default="postgres")
    parser.add_argument("--rooms", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=600.0, help="messages offered per second")
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--port", type=int, default=0, help="the echo server's port")
    args = parser.parse_args(argv)
    if args.what == "echo-server":
        _run_forever(serve_echo(args.port))
        return
    if args.what == "echo":
        result = echo_capacity(args.rate, args.seconds, args.rooms, args.senders)
    else:
        result = measure(args.db, args.seconds, args.rooms, rate=args.rate, senders=args.senders)
    print(json.dumps(result, indent=2))


def _run_forever(work: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(work)


if __name__ == "__main__":
    main()
