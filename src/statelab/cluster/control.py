"""The supervisor's control API (HTTP on loopback) and the client the CLI uses.

Routes (JSON in and out; errors are ``{"error": "..."}`` with a 4xx/5xx code)::

    GET    /status                       every process, as HAProxy sees the replicas
    GET    /events?since=TS              recent events (the full log is events.jsonl)
    POST   /replicas                     add a replica under load
    POST   /replicas/{id}/kill?signal=KILL|TERM
    POST   /replicas/{id}/start          start it again / put it back in rotation
    POST   /replicas/{id}/drain          no new requests; in-flight ones finish
    DELETE /replicas/{id}                drain, stop and remove
    POST   /rolling-restart              one replica at a time, each drained first
    POST   /redis/restart?mode=kill|clean

The API has no authentication: it listens on 127.0.0.1 only, like the rest of
the lab, and anyone who can reach it can already signal our processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from statelab.cluster import dashboard
from statelab.cluster.servers import ServerError
from statelab.cluster.supervisor import Cluster, ClusterError, read_state

__all__ = ["ClusterNotFound", "ControlClient", "ControlServer", "create_control_app"]


def create_control_app(cluster: Cluster) -> FastAPI:
    """The control API over ``cluster``."""
    app = FastAPI(title="statelab control", docs_url=None, redoc_url=None)
    app.state.cluster = cluster
    app.include_router(router)
    dashboard.install(app)  # GET / is the lab dashboard
    app.add_exception_handler(ClusterError, _cluster_error)  # type: ignore[arg-type]
    app.add_exception_handler(ServerError, _server_error)  # type: ignore[arg-type]
    return app


async def _cluster_error(request: Request, exc: ClusterError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, exc.status)


async def _server_error(request: Request, exc: ServerError) -> JSONResponse:
    # A process we manage failed to start or answer: the gateway's fault, not the caller's.
    return JSONResponse({"error": str(exc)}, 502)


def _cluster(request: Request) -> Cluster:
    cluster: Cluster = request.app.state.cluster
    return cluster


ClusterDep = Annotated[Cluster, Depends(_cluster)]
router = APIRouter()


@router.get("/status")
async def status(cluster: ClusterDep) -> dict[str, Any]:
    return cluster.status()


@router.get("/events")
async def events(cluster: ClusterDep, since: float = 0.0) -> list[dict[str, Any]]:
    return cluster.events.since(since)


@router.post("/replicas", status_code=201)
async def add(cluster: ClusterDep) -> dict[str, Any]:
    return await cluster.add_replica()


@router.post("/replicas/{rid}/kill")
async def kill(
    cluster: ClusterDep, rid: str, signal: Literal["KILL", "TERM"] = "KILL"
) -> dict[str, Any]:
    return await cluster.kill(rid, _SIGNALS[signal])


@router.post("/replicas/{rid}/start")
async def start(cluster: ClusterDep, rid: str) -> dict[str, Any]:
    return await cluster.start_replica(rid)


@router.post("/replicas/{rid}/drain")
async def drain(cluster: ClusterDep, rid: str) -> dict[str, Any]:
    return await cluster.drain(rid)


@router.delete("/replicas/{rid}")
async def remove(cluster: ClusterDep, rid: str) -> dict[str, Any]:
    return await cluster.remove_replica(rid)


@router.post("/rolling-restart")
async def rolling_restart(cluster: ClusterDep) -> dict[str, Any]:
    return await cluster.rolling_restart()


@router.post("/redis/restart")
async def restart_redis(
    cluster: ClusterDep, mode: Literal["kill", "clean"] = "kill"
) -> dict[str, Any]:
    return await cluster.restart_redis(hard=mode == "kill")


_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}


class _QuietServer(uvicorn.Server):
    def capture_signals(self) -> contextlib.nullcontext[None]:  # type: ignore[override]
        # The supervisor owns SIGINT/SIGTERM (it must stop the whole cluster in
        # order); uvicorn's own handlers would re-raise them after it stops.
        return contextlib.nullcontext()


class ControlServer:
    """Serves the control API inside the supervisor's event loop."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        config = uvicorn.Config(
            create_control_app(cluster), log_level="warning", lifespan="off", access_log=False
        )
        self._server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        """Serve on the socket the cluster bound at preflight (binding it there, not
        in uvicorn, makes the port ours before cluster.json names it)."""
        self.cluster.preflight()
        sock = self.cluster.control_socket
        if sock is None:
            raise ServerError("the control API has no socket")
        self._sock = sock
        self._task = asyncio.get_running_loop().create_task(self._server.serve([sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise ServerError("the control API stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        if self._sock is not None:
            self._sock.close()


class ClusterNotFound(ClusterError):
    """No cluster state in the run folder, or its supervisor does not answer."""


class ControlClient:
    """Talks to the control API of the cluster running from ``run_dir``."""

    def __init__(self, run_dir: Path = Path("run"), timeout: float = 180.0) -> None:
        self.run_dir = run_dir
        state = read_state(run_dir)
        if state is None:
            raise ClusterNotFound(
                f"no cluster found in {run_dir}/ (start one with `statelab up`, "
                "or pass the --run-dir it uses)",
                404,
            )
        self.state = state
        self.base_url: str = state["control_url"]
        self.timeout = timeout

    def _call(self, method: str, path: str, **params: str) -> Any:
        try:
            response = httpx.request(
                method, self.base_url + path, params=params or None, timeout=self.timeout
            )
        except httpx.TransportError as exc:
            raise ClusterNotFound(
                f"the cluster in {self.run_dir}/ does not answer at {self.base_url} "
                f"(is `statelab up` still running?): {exc}",
                503,
            ) from exc
        if response.is_error:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise ClusterError(str(message), response.status_code)
        return response.json()

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/status")
        return result

    def events(self, since: float = 0.0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/events", since=str(since))
        return result

    def kill(self, rid: str, sig: Literal["KILL", "TERM"] = "KILL") -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/replicas/{rid}/kill", signal=sig)
        return result

    def start(self, rid: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/replicas/{rid}/start")
        return result

    def drain(self, rid: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/replicas/{rid}/drain")
        return result

    def add(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/replicas")
        return result

    def remove(self, rid: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/replicas/{rid}")
        return result

    def rolling_restart(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/rolling-restart")
        return result

    def restart_redis(self, mode: Literal["kill", "clean"] = "kill") -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/redis/restart", mode=mode)
        return result


def format_status(status: dict[str, Any]) -> str:
    """A plain-text table of ``status`` for people."""
    lines = [
        f"profile {status['profile']}   shop {status['shop_url']}   "
        f"control {status['control_url']}",
        f"{'ID':<6}{'STATE':<10}{'PID':>8}{'PORT':>7}{'REQUESTS':>10}{'SESSIONS':>10}  HAPROXY",
    ]
    for r in status["replicas"]:
        pid = r["pid"] if r["pid"] is not None else "-"
        lines.append(
            f"{r['id']:<6}{r['state']:<10}{pid:>8}{r['port']:>7}"
            f"{r['requests']:>10}{r['sessions']:>10}  {r['lb_status'] or '-'}"
        )
    for name in ("redis", "haproxy"):
        proc = status.get(name)
        if proc:
            pid = proc["pid"] if proc["pid"] is not None else "-"
            lines.append(f"{name:<16}{proc['state']:<6}{pid:>8}")
    for worker in status.get("workers", []):
        lines.append(f"{worker['name']:<16}{worker['state']:<6}{worker['pid'] or '-':>8}")
    return "\n".join(lines)
