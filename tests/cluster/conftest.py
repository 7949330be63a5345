"""A whole cluster for the cluster tests: ``statelab up`` as a real process.

``up`` is started exactly as a person would start it, driven through the control
API client the CLI uses, and stopped with SIGTERM; stopping checks that every
process the cluster recorded is gone. It chooses its own ports (``--port 0
--control-port 0``); the tests find them in its ``cluster.json``.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from statelab.cluster.client import ClusterError, ControlClient, read_state
from statelab.cluster.members import statelab_command
from statelab.cluster.servers import ManagedProcess

PASSWORD = "correct horse battery"

#: Cheap password hashing: the tests log in often and the machine has 2 cores.
FAST_SETTINGS = {"STATELAB_ARGON2_TIME_COST": "1", "STATELAB_ARGON2_MEMORY_KIB": "1024"}


@dataclass
class RunningCluster:
    """A ``statelab up`` process and the ways to talk to what it runs."""

    process: ManagedProcess
    run_dir: Path
    shop_url: str
    control: ControlClient
    pids: dict[str, int] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        return self.control.status()

    def events(self) -> list[dict[str, Any]]:
        lines = (self.run_dir / "events.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def wait_for(self, check: Callable[[dict[str, Any]], bool], within: float = 10.0) -> None:
        """Poll ``status`` until ``check`` holds (bounded)."""
        deadline = time.monotonic() + within
        while not check(status := self.status()):
            assert time.monotonic() < deadline, f"cluster did not settle: {status}"
            time.sleep(0.1)

    def all_up(self) -> None:
        self.wait_for(lambda s: all(r["state"] == "up" for r in s["replicas"]), 20.0)

    def kill_to_down_seconds(self, rid: str) -> float:
        """From the last SIGKILL of ``rid`` to HAProxy marking it DOWN (events log)."""
        events = self.events()
        kill = [e for e in events if e["event"] == "replica.kill" and e["target"] == rid][-1]
        down = next(
            e
            for e in events
            if e["event"] == "lb.state" and e["target"] == rid and e["now"] == "DOWN"
            and e["ts"] >= kill["ts"]
        )  # fmt: skip
        return float(down["ts"] - kill["ts"])

    def stop(self) -> None:
        recorded = json.loads((self.run_dir / "cluster.json").read_text())["processes"]
        assert self.process.stop(60) in (0, -15), self.process.log_tail()
        left = [name for name, p in recorded.items() if _alive(p["pid"])]
        assert left == [], f"left behind: {left}"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def start_cluster(run_dir: Path, profile: str, replicas: int = 3, *extra: str) -> RunningCluster:
    """Run ``statelab up`` in ``run_dir`` on ports it chooses; wait for its control API."""
    argv = [
        *statelab_command(), "up",
        "--profile", profile,
        "--replicas", str(replicas),
        "--port", "0",
        "--control-port", "0",
        "--run-dir", str(run_dir),
        "--fresh",
        *extra,
    ]  # fmt: skip
    env = {**os.environ, **FAST_SETTINGS}
    up = ManagedProcess("up", run_dir, argv, env=env, ready=lambda: answers_status(run_dir, up.pid))
    up.start()
    try:
        up.wait_ready(90)
    except BaseException:
        up.stop()
        raise
    control = ControlClient(run_dir)
    cluster = RunningCluster(up, run_dir, control.state["shop_url"], control)
    cluster.all_up()
    return cluster


def answers_status(run_dir: Path, supervisor: int | None) -> bool:
    """Whether the cluster ``supervisor`` runs from ``run_dir`` answers on its control
    API (whose port it publishes in ``cluster.json`` before that)."""
    state = read_state(run_dir)
    if state is None or state["supervisor"]["pid"] != supervisor:
        return False  # not written yet, or left by an earlier run
    try:
        ControlClient(run_dir, timeout=2).status()
    except ClusterError:
        return False
    return True


@pytest.fixture(scope="module")
def stateless_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    """One stateless cluster of 3 replicas shared by a module's tests."""
    cluster = start_cluster(tmp_path_factory.mktemp("stateless"), "stateless")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def stateful_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("stateful"), "stateful")
    yield cluster
    cluster.stop()


class Shopper:
    """One browser: its own cookies, logged in as its own user."""

    def __init__(self, shop_url: str) -> None:
        self.client = httpx.AsyncClient(base_url=shop_url, timeout=10.0)
        self.headers: dict[str, str] = {}
        self.username = f"u{secrets.token_hex(4)}"
        self.served_by: str | None = None

    async def login(self) -> None:
        body = {"username": self.username, "password": PASSWORD}
        r = await self.client.post("/api/auth/register", json=body)
        assert r.status_code == 201, r.text
        r = await self.client.post("/api/auth/login", json=body)
        assert r.status_code == 200, r.text
        data = r.json()
        if "access_token" in data:
            self.headers = {"Authorization": f"Bearer {data['access_token']}"}
        else:
            self.headers = {"X-CSRF-Token": data["csrf_token"]}
        self.served_by = r.headers["X-Served-By"]

    async def add(self, item_id: int, quantity: int = 1) -> httpx.Response:
        return await self.client.post(
            "/api/cart/items",
            json={"item_id": item_id, "quantity": quantity},
            headers=self.headers,
        )

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(path, headers=self.headers)

    async def cart(self) -> dict[int, int]:
        r = await self.get("/api/cart")
        assert r.status_code == 200, r.text
        return {line["item_id"]: line["quantity"] for line in r.json()["items"]}

    async def close(self) -> None:
        await self.client.aclose()


ShopperFactory = Callable[[RunningCluster, int], Awaitable[list[Shopper]]]


@pytest.fixture
async def shoppers() -> AsyncIterator[ShopperFactory]:
    """``await shoppers(cluster, n)``: n logged-in browsers, closed after the test."""
    made: list[Shopper] = []

    async def make(cluster: RunningCluster, count: int) -> list[Shopper]:
        batch = [Shopper(cluster.shop_url) for _ in range(count)]
        made.extend(batch)
        for shopper in batch:
            await shopper.login()
        return batch

    yield make
    for shopper in made:
        await shopper.close()
