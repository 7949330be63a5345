"""The one door through which the lab reaches a deployment under test.

``Deployment`` is what a scenario may do besides talking to the shop as a client:
read the deployment's status (replicas, their CPU time and memory, the stores and
their counters), read its event log, and break or change it (kill a process, start
it again, add a replica, restart everything in turn, restart Redis). Nothing else —
no supervisor internals, no direct connection to Redis — so the same scenarios can
run against a deployment statelab did not start (Kubernetes, say), given an
implementation of this protocol over that platform's API.

``LocalDeployment`` is ``statelab up`` in a process of its own, driven through its
control API's client.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from statelab.cluster.client import ClusterError, ControlClient, read_state
from statelab.cluster.servers import ManagedProcess

Signal = Literal["KILL", "TERM"]

# Lab deployments create thousands of sessions, and its customers order hundreds
# of pizzas: production-strength argon2 would make the lab measure password
# hashing, and the cart, rate and session limits would refuse the load (the memory
# scenario logs one account in until a replica runs out of memory). Every other
# setting is the default.
LAB_ENV = {
    "STATELAB_ARGON2_TIME_COST": "1",
    "STATELAB_ARGON2_MEMORY_KIB": "1024",
    "STATELAB_MAX_LINE_QUANTITY": "1000000",
    "STATELAB_LOGIN_LIMIT_PER_ADDRESS": "1000000",
    "STATELAB_LOGIN_LIMIT_PER_ACCOUNT": "1000000",
    "STATELAB_REGISTER_LIMIT_PER_ADDRESS": "1000000",
    "STATELAB_MAX_SESSIONS_PER_USER": "100000000",
    "STATELAB_MAX_MEMORY_SESSIONS": "100000000",
    # Two malloc arenas instead of eight per core: less memory lost to fragmentation
    # by password-hashing threads, so the memory scenario measures sessions.
    "MALLOC_ARENA_MAX": "2",
}


class Deployment(Protocol):
    """What the lab may see and do to a running deployment."""

    shop_url: str

    async def status(self) -> dict[str, Any]:
        """The shape ``statelab cluster status --json`` prints: placements, balance,
        replicas (id, state, url, cpu_seconds, rss_bytes), redis, workers, ..."""
        ...

    async def events(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Cluster events after ``since`` (wall-clock seconds), oldest first."""
        ...

    async def redis_stats(self) -> dict[str, Any]:
        """The shared Redis's ``used_memory`` and per-command call counts."""
        ...

    async def kill(self, target: str, sig: Signal = "KILL") -> dict[str, Any]:
        """Signal a replica (``r1``), a worker (``w1``) or a Redis process (``redis-1``,
        ``sentinel-2``: see ``redis_processes``)."""
        ...

    async def start(self, target: str) -> dict[str, Any]:
        """Start a process named as for ``kill`` again (a replica back in rotation)."""
        ...

    async def add(self) -> dict[str, Any]: ...

    async def rolling_restart(self) -> dict[str, Any]: ...

    async def restart_redis(self, mode: Literal["kill", "clean"] = "kill") -> dict[str, Any]: ...

    async def set_redis_delay(self, ms: float) -> dict[str, Any]:
        """Delay every packet between the replicas and Redis by ``ms`` each way."""
        ...

    async def limit_memory(self, rid: str, headroom: int) -> dict[str, Any]:
        """Let replica ``rid`` take at most ``headroom`` more bytes of memory from now
        on (past it: killed); its status shows ``memory_limit_bytes``."""
        ...

    async def grant_admin(self, username: str) -> dict[str, Any]:
        """Give an account the shop's admin role."""
        ...


async def redis_processes(deployment: Deployment) -> list[dict[str, Any]]:
    """Every Redis process (name, pid, state, role: primary, replica, sentinel or down;
    a cluster node also its ``slots``), as the deployment sees them now."""
    status = await deployment.status()
    return list((status.get("redis") or {}).get("processes", []))


async def replica_urls(deployment: Deployment) -> dict[str, str]:
    """Direct URLs of the replicas that are up (to reach one on purpose)."""
    status = await deployment.status()
    return {r["id"]: r["url"] for r in status["replicas"] if r["state"] == "up" and r["alive"]}


async def wait_state(deployment: Deployment, rid: str, state: str, within: float = 15.0) -> float:
    """Seconds until the load balancer reports ``rid`` in ``state``."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        status = await deployment.status()
        if any(r["id"] == rid and r["state"] == state for r in status["replicas"]):
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{rid} did not become {state} within {within:.0f} s")


class LocalDeployment:
    """``statelab up`` in ``run_dir`` on ports it picks itself; stopped on exit."""

    def __init__(
        self,
        run_dir: Path,
        profile: str,
        replicas: int = 3,
        place: dict[str, str] | None = None,
        balance: str | None = None,
        options: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.profile = profile
        argv = [
            sys.executable, "-m", "statelab", "up", "--profile", profile,
            "--replicas", str(replicas), "--port", "0", "--control-port", "0",
            "--run-dir", str(run_dir), "--fresh", *options,
        ]  # fmt: skip
        for kind, placement in (place or {}).items():
            argv += ["--place", f"{kind}={placement}"]
        if balance:
            argv += ["--balance", balance]
        self._process = ManagedProcess(
            f"up-{run_dir.name}",
            run_dir.parent,
            argv,
            env={**os.environ, **LAB_ENV, **(env or {})},
            ready=self._all_up,
        )
        self._control: ControlClient | None = None
        self.shop_url = ""

    def _all_up(self) -> bool:
        state = read_state(self.run_dir)
        # A cluster.json from an earlier run names someone else's ports.
        if state is None or state.get("supervisor", {}).get("pid") != self._process.pid:
            return False
        try:
            status = ControlClient(self.run_dir, timeout=2).status()
        except ClusterError:
            return False
        return all(r["state"] == "up" for r in status["replicas"])

    def __enter__(self) -> Self:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._process.start()
        try:
            self._process.wait_ready(timeout=120)
        except BaseException:
            self._process.stop()
            raise
        self._control = ControlClient(self.run_dir)
        self.shop_url = self._control.state["shop_url"]
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._process.stop(timeout=30)

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.__exit__, t, e, tb)

    @property
    def control(self) -> ControlClient:
        assert self._control is not None, "the deployment is not running"
        return self._control

    # Control calls block on HTTP; run them in a thread so client load goes on.
    async def status(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.control.status)

    async def events(self, since: float = 0.0) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.control.events, since)

    async def redis_stats(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.control.redis_stats)

    async def kill(self, target: str, sig: Signal = "KILL") -> dict[str, Any]:
        return await asyncio.to_thread(self.control.kill, target, sig)

    async def start(self, target: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.control.start, target)

    async def add(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.control.add)

    async def rolling_restart(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.control.rolling_restart)

    async def restart_redis(self, mode: Literal["kill", "clean"] = "kill") -> dict[str, Any]:
        return await asyncio.to_thread(self.control.restart_redis, mode)

    async def set_redis_delay(self, ms: float) -> dict[str, Any]:
        return await asyncio.to_thread(self.control.set_redis_delay, ms)

    async def limit_memory(self, rid: str, headroom: int) -> dict[str, Any]:
        return await asyncio.to_thread(self.control.limit_memory, rid, headroom)

    async def grant_admin(self, username: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.control.grant_admin, username)
