"""The supervisor's control API (HTTP on loopback); its client is
``statelab.cluster.client``.

Routes (JSON in and out; errors are ``{"error": "..."}`` with a 4xx/5xx code)::

    GET    /status                       every process, as HAProxy sees the replicas
    GET    /events?since=TS              recent events (the full log is events.jsonl)
    POST   /replicas                     add a replica under load
    POST   /replicas/{id}/kill?signal=KILL|TERM   (a replica, a worker, or redis)
    POST   /replicas/{id}/start          start it again / put it back in rotation
    POST   /replicas/{id}/drain          no new requests; in-flight ones finish
    POST   /replicas/{id}/memory-limit?headroom=N   N more bytes at most (cgroup)
    DELETE /replicas/{id}                drain, stop and remove
    POST   /rolling-restart              one replica at a time, each drained first
    POST   /redis/restart?mode=kill|clean
    GET    /redis/stats                  used memory and calls per command
    POST   /redis/delay?ms=X             delay replica<->Redis traffic (delay proxy)
    POST   /admins?username=U            give a shop account the admin role

The API has no authentication: it listens on 127.0.0.1 only, like the rest of
the lab, and anyone who can reach it can already signal our processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse

from statelab.cluster import dashboard
from statelab.cluster.runfolder import ClusterError
from statelab.cluster.servers import ServerError
from statelab.cluster.supervisor import Cluster

__all__ = ["ControlServer", "create_control_app"]


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


@router.get("/redis/stats")
async def redis_stats(cluster: ClusterDep) -> dict[str, Any]:
    return await cluster.redis_stats()


@router.post("/redis/delay")
async def redis_delay(
    cluster: ClusterDep, ms: Annotated[float, Query(ge=0, le=1000)]
) -> dict[str, Any]:
    return cluster.set_redis_delay(ms)


@router.post("/replicas/{rid}/memory-limit")
async def memory_limit(
    cluster: ClusterDep, rid: str, headroom: Annotated[int, Query(ge=2**20)]
) -> dict[str, Any]:
    return await cluster.limit_memory(rid, headroom)


@router.post("/admins")
async def grant_admin(
    cluster: ClusterDep, username: Annotated[str, Query(min_length=1, max_length=100)]
) -> dict[str, Any]:
    return await cluster.grant_admin(username)


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
