"""Running one replica: uvicorn with a drain period on SIGTERM.

On SIGTERM the replica first turns ``/readyz`` to 503 so the load balancer stops
sending it new requests, waits ``drain_seconds`` for that to be noticed, then lets
uvicorn stop: it closes the listener, finishes in-flight requests (bounded by
``graceful_timeout_seconds``) and closes WebSockets with 1012 (service restart).

Why uvicorn (with uvloop and httptools) and not granian: measured side by side,
each held to one core, granian 2.8 (one worker, single-threaded runtime, uvloop)
served the cart read for the same CPU per request, within the noise of the runs
(granian vs uvicorn: stateful 199 vs 201 µs, stateless 237 vs 222 µs, five rounds;
``tests/web/measure.py``, columns ``NAME+granian``). With nothing to gain, the
replica keeps one server, and the drain stays written for it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from types import FrameType

import uvicorn

from statelab.config import Settings
from statelab.db.migrate import NotMigrated, check_migrated_sync
from statelab.web.app import create_app

__all__ = ["NotMigrated", "run_replica"]

log = logging.getLogger(__name__)


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self._draining = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        settle_heap()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.loaded_app
        if sig != signal.SIGTERM or self._draining or self.drain_seconds <= 0:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        _mark_draining(app)
        log.info("SIGTERM: draining for %.1f s before shutdown", self.drain_seconds)
        loop = asyncio.get_event_loop()
        loop.call_later(self.drain_seconds, super().handle_exit, sig, frame)


#: Allocations between two collections of the youngest generation (Python: 700).
GC_YOUNGEST = 10_000


def settle_heap() -> None:
    """Exempt what the replica holds from its start from the garbage collector, and
    collect the young less often.

    A request that waits for a store keeps what it allocated alive across the wait,
    so under load its objects survive young collections and reach the oldest
    generation, and each collection of that one walks every object of the process:
    the framework, the drivers, the ORM. That walk cost a quarter of a cart read's
    CPU (and pauses of tens of milliseconds); what was loaded at startup lives as
    long as the process anyway. Fewer young collections let more of a request's
    objects die before one looks at them (~8 % of a cart read, measured)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNGEST)


def _mark_draining(app: object) -> None:
    # The loaded app is wrapped in uvicorn's middlewares; find the FastAPI state.
    while app is not None:
        state = getattr(app, "state", None)
        if state is not None and hasattr(state, "draining"):
            state.draining = True
            return
        app = getattr(app, "app", None)


def _uvicorn_config(settings: Settings) -> uvicorn.Config:
    """uvicorn's settings for one replica.

    Only the trusted proxies may name the client (X-Forwarded-For): the per-address
    rate limits count that address. A WebSocket frame may be as large as the largest
    legitimate chat frame, not uvicorn's 16 MiB; a larger one closes the socket with
    1009. No permessage-deflate: chat frames are small, and each compressed socket
    would hold zlib state (hundreds of KiB) for as long as it is open."""
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        # websockets' sans-I/O protocol: the one uvicorn keeps (its "websockets" one is
        # deprecated), and 15-20 % less CPU per chat frame here.
        ws="websockets-sansio",
        ws_max_size=settings.chat_max_frame_bytes,
        ws_per_message_deflate=False,
        proxy_headers=True,
        forwarded_allow_ips=list(settings.trusted_proxies),
        timeout_graceful_shutdown=int(settings.graceful_timeout_seconds),
        access_log=False,
        server_header=False,
        log_level="info",
    )


def run_replica(settings: Settings) -> None:
    """Serve the shop on ``settings.host:settings.port`` until told to stop."""
    check_migrated_sync(settings.database_url)
    _DrainingServer(_uvicorn_config(settings), settings.drain_seconds).run()
