"""A deployment under test: ``statelab up`` in its own process, driven through its
control API. The lab never reaches into it otherwise — the same scenarios could
run against any deployment that offers the shop's URL and a control API.

The deployment chooses its own ports (``--port 0 --control-port 0``) and the lab
reads them from its ``cluster.json``: a port picked here and passed on could be
taken by someone else before ``statelab up`` binds it."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from statelab.cluster.control import ControlClient
from statelab.cluster.servers import ManagedProcess
from statelab.cluster.supervisor import ClusterError, read_state

# Lab deployments create thousands of sessions, and its customers order hundreds
# of pizzas: production-strength argon2 would make the lab measure password
# hashing, and the cart limits would refuse the load. The memory scenario logs one
# account in up to 100 000 times: past the session bounds of a replica. Every
# other setting is the default.
LAB_ENV = {
    "STATELAB_ARGON2_TIME_COST": "1",
    "STATELAB_ARGON2_MEMORY_KIB": "1024",
    "STATELAB_MAX_LINE_QUANTITY": "1000000",
    "STATELAB_LOGIN_LIMIT_PER_ADDRESS": "1000000",
    "STATELAB_LOGIN_LIMIT_PER_ACCOUNT": "1000000",
    "STATELAB_MAX_SESSIONS_PER_USER": "1000000",
    "STATELAB_MAX_MEMORY_SESSIONS": "1000000",
    "STATELAB_REGISTER_LIMIT_PER_ADDRESS": "1000000",
}


class Deployment:
    """``statelab up --profile P --replicas N`` in ``run_dir``; stopped on exit."""

    def __init__(
        self,
        run_dir: Path,
        profile: str,
        replicas: int = 3,
        place: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.profile = profile
        self.replicas = replicas
        argv = [
            sys.executable, "-m", "statelab", "up", "--profile", profile,
            "--replicas", str(replicas), "--port", "0", "--control-port", "0",
            "--run-dir", str(run_dir), "--fresh",
        ]  # fmt: skip
        for kind, placement in (place or {}).items():
            argv += ["--place", f"{kind}={placement}"]
        self._process = ManagedProcess(
            f"up-{profile}",
            run_dir.parent,
            argv,
            env={**os.environ, **LAB_ENV, **(env or {})},
            ready=self._all_up,
        )
        self._control: ControlClient | None = None
        self.shop_url = ""  # known once it is up

    def _all_up(self) -> bool:
        state = read_state(self.run_dir)
        # A cluster.json from an earlier run names someone else's ports.
        if state is None or state.get("supervisor", {}).get("pid") != self._process.pid:
            return False
        try:
            status = ControlClient(self.run_dir, timeout=2).status()
        except ClusterError:
            return False
        self.shop_url = str(status["shop_url"])
        return all(r["state"] == "up" for r in status["replicas"])

    def __enter__(self) -> Self:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._process.start()
        try:
            self._process.wait_ready(timeout=90)
        except BaseException:
            self._process.stop()
            raise
        self._control = ControlClient(self.run_dir)
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._process.stop(timeout=30)

    @property
    def control(self) -> ControlClient:
        assert self._control is not None, "the deployment is not running"
        return self._control

    # Control calls block on HTTP; run them in a thread so client load goes on.
    async def status(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.control.status)

    async def kill(self, rid: str, sig: Literal["KILL", "TERM"] = "KILL") -> dict[str, Any]:
        return await asyncio.to_thread(self.control.kill, rid, sig)

    async def start(self, rid: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.control.start, rid)

    async def add(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.control.add)

    async def rolling_restart(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.control.rolling_restart)

    async def restart_redis(self, mode: Literal["kill", "clean"] = "kill") -> dict[str, Any]:
        return await asyncio.to_thread(self.control.restart_redis, mode)

    async def events(self, since: float = 0.0) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.control.events, since)

    async def replica_urls(self) -> dict[str, str]:
        """Direct URLs of the replicas that are up (to reach one on purpose)."""
        status = await self.status()
        return {r["id"]: r["url"] for r in status["replicas"] if r["state"] == "up" and r["alive"]}

    async def wait_state(self, rid: str, state: str, within: float = 15.0) -> float:
        """Seconds until the load balancer reports ``rid`` in ``state``."""
        started = time.monotonic()
        while time.monotonic() - started < within:
            status = await self.status()
            if any(r["id"] == rid and r["state"] == state for r in status["replicas"]):
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{rid} did not become {state} within {within:.0f} s")
