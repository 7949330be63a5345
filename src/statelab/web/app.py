"""The app factory: one FastAPI app per replica, built from its settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request
from fastapi.telemetry import TelemetryConfig
from starlette.responses import Response

from statelab.config import Settings
from statelab.db.engine import StatementCount
from statelab.jobs import perform_job
from statelab.state import Stores, open_stores
from statelab.web import admin, auth, chat, files, openapi, ops, pages, problems, reports, shop
from statelab.web.ops import BodyTooLarge, Metrics, ReplicaMiddleware

NO_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}


def create_app(settings: Settings) -> FastAPI:
    """A replica's app. Stores are opened by the lifespan, closed after it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_stores(settings) as stores:
            app.state.stores = stores
            stores.jobs.attach(partial(perform_job, stores))  # where jobs=inprocess runs them
            app.state.draining = False
            app.state.metrics.watch(_store_calls(stores))
            # The sockets' hub, subscriber and heartbeat; the periodic work (timers=inprocess).
            async with chat.running(app, stores), stores.timers.running():
                yield

    app = FastAPI(
        title="statelab shop",
        version="1",
        summary="A pizza shop whose state can live in the replica, a shared store or the client.",
        lifespan=lifespan,
        # The replica exports its own metrics (/metrics). FastAPI's OpenTelemetry hooks
        # would otherwise ask the global providers on every request whether anyone
        # listens: off.
        telemetry=NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.draining = False
    app.state.on_order = []  # shop.OrderHook: run after a paid order (receipt jobs)
    app.state.on_logout_all = []  # async hooks run after logout-all (closing sockets)
    app.state.on_logout = []  # async hooks run after one session ends (its sockets)
    app.state.on_order.append(files.receipt_hook(app))
    metrics = Metrics(settings.replica_id)
    app.state.metrics = metrics
    problems.install(app)
    app.add_exception_handler(BodyTooLarge, _too_large)
    # FastAPI tries the routers in this order, matching every route of each until one
    # fits: the shop's (the cart, the hot path) first.
    for router in (
        shop.router,
        auth.router,
        admin.router,
        reports.router,
        ops.router,
        chat.router,
        files.router,
    ):
        app.include_router(router)
    pages.install(app)  # the browser pages and /static
    openapi.install(app)  # every route's error answers, once all are included
    app.add_middleware(
        ReplicaMiddleware,
        replica_id=settings.replica_id,
        metrics=metrics,
        max_body=settings.max_body_bytes,
        raw_prefixes=(("/api/files", settings.max_upload_bytes + files.MULTIPART_OVERHEAD),),
    )
    return app


async def _too_large(_: Request, exc: Exception) -> Response:
    return problems.problem(413, "Payload too large", str(exc))


def _store_calls(stores: Stores) -> dict[str, Callable[[], int]]:
    """Counters of what the request path sends each store."""
    sql = StatementCount(stores.engine)
    counters: dict[str, Callable[[], int]] = {"sql": lambda: sql.value}
    link = stores.link
    if link is not None:
        counters["redis"] = lambda: link.commands
    return counters
