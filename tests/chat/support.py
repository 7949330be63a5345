"""Real replicas (``statelab serve`` processes) and a real WebSocket chat client.

Used by the chat tests and by ``python -m tests.chat.measure``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from statelab.cluster.haproxy import HAProxyServer, LoadBalancerConfig
from statelab.cluster.servers import PortedProcess
from tests.support import PASSWORD, PROCESS_ENV, answers_ok

# Re-exported: the chat tests and measure.py import these from here.
from tests.support import sqlite_database as sqlite_database
from tests.support import unique as unique

SECRET = "chat-tests-7632f0bad4bc13c5788dae35878a092c3aed3dfdf421335e93f2fb49c9516686"

#: Settings every test replica gets: the shared ones, and short TTLs so expiry can
#: be observed within a test.
BASE_ENV = {
    **PROCESS_ENV,
    "STATELAB_SECRET_KEY": SECRET,
    "STATELAB_CHAT_PRESENCE_TTL_SECONDS": "3",
    "STATELAB_CHAT_TYPING_TTL_SECONDS": "1",
    "STATELAB_CHAT_FRAMES_PER_SECOND": "100000",
    "STATELAB_CHAT_FRAME_BURST": "100000",
}


class Target(Protocol):
    """Where a client connects: a replica, or the load balancer in front of them."""

    @property
    def http(self) -> str: ...

    @property
    def ws_url(self) -> str: ...


class Replica(PortedProcess):
    """One ``statelab serve`` process on a port of its own (kept across restarts)."""

    def __init__(
        self,
        run_dir: Path,
        replica_id: str,
        profile: str,
        database_url: str,
        redis_url: str | None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.replica_id = replica_id
        argv = [
            sys.executable, "-m", "statelab", "serve",
            "--profile", profile,
            "--replica-id", replica_id,
            "--database-url", database_url,
        ]  # fmt: skip
        if redis_url is not None:
            argv += ["--redis-url", redis_url]
        environment = {
            **os.environ,
            **BASE_ENV,
            "STATELAB_DATA_DIR": str(run_dir / f"data-{replica_id}"),
            **(env or {}),
        }
        super().__init__(f"replica-{replica_id}", run_dir, argv, env=environment)

    def command(self) -> list[str]:
        return [*super().command(), "--port", str(self.port)]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat"

    def is_ready(self) -> bool:
        return answers_ok(f"{self.http}/readyz")

    def kill9(self) -> None:
        self.kill(signal.SIGKILL)
        assert self._proc is not None
        self._proc.wait(10)


@contextlib.contextmanager
def two_replicas_of(
    tmp_path: Path, profile: str, database: str, redis_url: str, env: dict[str, str] | None = None
) -> Iterator[tuple[Replica, Replica]]:
    """Replicas r1 and r2 started together, each waited for, both stopped after."""
    replicas = [Replica(tmp_path, rid, profile, database, redis_url, env) for rid in ("r1", "r2")]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready(30)
        yield replicas[0], replicas[1]
    finally:
        for replica in replicas:
            replica.stop(10)


class Balancer(HAProxyServer):
    """HAProxy, round-robin over the given replicas (the stateless profile's setup)."""

    def __init__(self, run_dir: Path, replicas: list[Replica]) -> None:
        self.replicas = replicas
        config = LoadBalancerConfig(
            port=0, socket_path=run_dir / "haproxy.sock", sticky=False, servers={}
        )
        super().__init__(run_dir, config)

    def prepare(self) -> None:
        # The replicas' ports as they are now: one may have moved while it started.
        self.cfg = replace(self.cfg, servers={r.replica_id: r.port for r in self.replicas})
        super().prepare()

    @property
    def http(self) -> str:
        return self.url

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.cfg.port}/ws/chat"


@dataclass
class Login:
    """What a client carries after logging in on one replica."""

    user_id: int
    username: str
    headers: dict[str, str]  # Cookie or Authorization, for HTTP and the socket
    csrf: dict[str, str]  # extra headers for cookie-authenticated writes


async def login(replica: Target, username: str, *, register: bool = True) -> Login:
    async with httpx.AsyncClient(base_url=replica.http, timeout=10) as http:
        if register:
            r = await http.post(
                "/api/auth/register", json={"username": username, "password": PASSWORD}
            )
            assert r.status_code in (201, 409), r.text
        r = await http.post("/api/auth/login", json={"username": username, "password": PASSWORD})
        assert r.status_code == 200, r.text
        body = r.json()
        if "access_token" in body:
            headers = {"Authorization": f"Bearer {body['access_token']}"}
            return Login(body["user_id"], username, headers, {})
        cookie = "; ".join(f"{c.name}={c.value}" for c in http.cookies.jar)
        return Login(
            body["user_id"], username, {"Cookie": cookie}, {"X-CSRF-Token": body["csrf_token"]}
        )


async def api(replica: Target, who: Login, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {**who.headers, **(who.csrf if method != "GET" else {})}
    async with httpx.AsyncClient(base_url=replica.http, timeout=10) as http:
        return await http.request(method, path, headers=headers, **kw)


async def new_room(replica: Target, who: Login, name: str = "pizza talk") -> str:
    r = await api(replica, who, "POST", "/api/chat/rooms", json={"name": name})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@dataclass
class ChatClient:
    """A WebSocket client that records every frame it receives, with arrival times."""

    ws: ClientConnection
    frames: list[dict[str, Any]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    close_code: int | None = None
    acks: list[str] = field(default_factory=list)  # client_msg_ids acked, in order
    _event: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, replica: Target, who: Login | None, origin: str | None = None, **kw: Any
    ) -> ChatClient:
        headers = dict(who.headers) if who is not None else {}
        if origin is not None:
            headers["Origin"] = origin
        ws = await connect(replica.ws_url, additional_headers=headers, open_timeout=10, **kw)
        client = cls(ws)
        client._task = asyncio.create_task(client._read())
        return client

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                self.frames.append(frame)
                if frame["type"] == "ack":
                    self.acks.append(frame["client_msg_id"])
                self.arrived.append(time.monotonic())
                self._event.set()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code if self.ws.close_code is not None else 1006
            self._event.set()

    @property
    def closed(self) -> bool:
        return self._task is not None and self._task.done()

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    def mark(self) -> int:
        return len(self.frames)

    async def wait(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0, since: int = 0
    ) -> dict[str, Any]:
        """The first frame (from index ``since``) matching ``pred``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        scanned = since
        while True:
            self._event.clear()
            for frame in self.frames[scanned:]:
                if pred(frame):
                    return frame
            scanned = max(scanned, len(self.frames))
            remaining = deadline - time.monotonic()
            if self.closed or remaining <= 0:
                raise AssertionError(
                    f"no matching frame (closed={self.close_code}); last: {self.frames[-5:]}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), remaining)

    async def wait_closed(self, timeout: float = 10.0) -> int:
        assert self._task is not None
        await asyncio.wait_for(asyncio.shield(self._task), timeout)
        assert self.close_code is not None
        return self.close_code

    def of(self, kind: str, room: str | None = None) -> list[dict[str, Any]]:
        return [
            f for f in self.frames if f["type"] == kind and (room is None or f.get("room") == room)
        ]

    def seqs(self, room: str) -> list[int]:
        return [int(f["seq"]) for f in self.of("message", room)]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)


def is_type(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    """A predicate: a frame of this type whose given fields have these values."""
    return lambda f: f["type"] == kind and all(f.get(k) == v for k, v in fields.items())


async def wait_until(check: Callable[[], Any], timeout: float, step: float = 0.1) -> float:
    """Poll an async or plain check until truthy; returns the seconds it took."""
    started = time.monotonic()
    for _ in range(int(timeout / step) + 1):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


async def probe(client: ChatClient) -> int:
    """Frames are sent in order: once the error for this bad frame arrives, everything
    the server queued before it has arrived too. Returns its index."""
    mark = client.mark()
    await client.send(type="probe")
    await client.wait(is_type("error", code="bad_frame"), since=mark)
    return next(i for i in range(mark, len(client.frames)) if client.frames[i]["type"] == "error")


async def joined(target: Target, who: Login, room: str) -> ChatClient:
    """A socket that joined ``room`` (the ``unread`` frame confirms the join)."""
    client = await ChatClient.open(target, who)
    await client.send(type="join", room=room)
    await client.wait(is_type("unread", room=room))
    return client
