"""Operations endpoints and the replica middleware (X-Served-By, metrics, limits)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from pydantic import BaseModel, Field
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from statelab.web.deps import StoresDep
from statelab.web.problems import RETRY_AFTER, problem

router = APIRouter(tags=["ops"])


class Health(BaseModel):
    status: str
    replica: str


class Readiness(BaseModel):
    ready: bool
    draining: bool
    stores: dict[str, bool] = Field(description="Whether each store answers")


@router.get("/healthz")
async def healthz(request: Request) -> Health:
    """The process is alive (says nothing about its stores)."""
    return Health(status="ok", replica=request.app.state.settings.replica_id)


NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "Not ready: a store does not answer, or the replica is draining",
        "model": Readiness,
        "headers": RETRY_AFTER,
    }
}


@router.get("/readyz", response_model=Readiness, responses=NOT_READY)
async def readyz(request: Request, stores: StoresDep) -> JSONResponse:
    """Ready to serve: every store answers and the replica is not shutting down."""
    checks = await stores.check_ready()
    draining = bool(request.app.state.draining)
    ready = all(checks.values()) and not draining
    body = {"ready": ready, "draining": draining, "stores": checks}
    return JSONResponse(body, 200 if ready else 503, {"Retry-After": "1"} if not ready else None)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this replica (text exposition format)."""
    registry: CollectorRegistry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class Metrics:
    """Per-app Prometheus collectors, labelled with the replica id."""

    def __init__(self, replica_id: str) -> None:
        self.registry = CollectorRegistry()
        # Resident memory and CPU of this replica: the lab's memory scenario reads them.
        ProcessCollector(registry=self.registry)
        self.replica = replica_id
        self.requests = Counter(
            "statelab_requests",
            "HTTP requests served",
            ["replica", "method", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "statelab_request_seconds",
            "Time to answer, by endpoint",
            ["replica", "endpoint"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        # The labelled children, by (method, endpoint, status): ``labels()`` costs more
        # than counting. Bounded: the HTTP parser knows a fixed set of methods, the app
        # a fixed set of endpoints and statuses.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and how long it took."""
        key = (method, endpoint, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(self.replica, method, endpoint, str(status)),
                self.latency.labels(self.replica, endpoint),
            )
        count, latency = children
        count.inc()
        latency.observe(seconds)

    def watch(self, counters: dict[str, Callable[[], int]]) -> None:
        """Export the stores' call counters (see ``StoreCalls``)."""
        self.registry.register(StoreCalls(self.replica, counters))


class StoreCalls:
    """Counts of what the request path sent its stores (SQL statements, Redis commands
    over the request-path link), exported as ``statelab_store_calls_total``: the lab
    divides their growth by requests to get store round trips per request."""

    def __init__(self, replica_id: str, counters: dict[str, Callable[[], int]]) -> None:
        self.replica = replica_id
        self.counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "statelab_store_calls",
            "Commands and statements sent to stores",
            labels=["replica", "store"],
        )
        for store, read in self.counters.items():
            family.add_metric([self.replica, store], read())
        yield family


JSON_ONLY_PREFIX = "/api/"
#: The methods whose body a route reads; a body sent with any other is ignored.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class ReplicaMiddleware:
    """One pure-ASGI layer (cheaper than several): stamps ``X-Served-By``, counts
    requests, refuses oversized bodies (413) and non-JSON API bodies (415) of the
    methods that carry one (``BODY_METHODS``; no route reads another's body).

    ``raw_prefixes`` are API paths that take other bodies with their own limit
    (uploads)."""

    def __init__(
        self,
        app: ASGIApp,
        replica_id: str,
        metrics: Metrics,
        max_body: int,
        raw_prefixes: tuple[tuple[str, int], ...] = (),
    ) -> None:
        self.app = app
        self.served_by = (b"x-served-by", replica_id.encode())
        self.metrics = metrics
        self.max_body = max_body
        self.raw_prefixes = raw_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.app(scope, receive, self._stamp_accept(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_stamped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), self.served_by]
            await send(message)

        if scope["method"] not in BODY_METHODS:  # no route reads its body: nothing to limit
            await self.app(scope, receive, send_stamped)
        elif (refusal := self._refuse(scope)) is not None:
            await refusal(scope, receive, send_stamped)
        else:
            limit = self._limit(scope["path"])
            await self.app(scope, _limited(receive, limit), send_stamped)
        self._observe(scope, status, time.perf_counter() - started)

    def _stamp_accept(self, send: Send) -> Send:
        """WebSocket handshakes say which replica holds the socket, too."""

        async def stamped(message: Message) -> None:
            if message["type"] == "websocket.accept":
                message["headers"] = [*message.get("headers", []), self.served_by]
            await send(message)

        return stamped

    def _limit(self, path: str) -> int:
        for prefix, limit in self.raw_prefixes:
            if path.startswith(prefix):
                return limit
        return self.max_body

    def _refuse(self, scope: Scope) -> Response | None:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        limit = self._limit(scope["path"])
        if length is not None and (not length.isdigit() or int(length) > limit):
            return problem(413, "Payload too large", f"the body limit here is {limit} bytes")
        has_body = (length is not None and length != b"0") or b"transfer-encoding" in headers
        raw = any(scope["path"].startswith(p) for p, _ in self.raw_prefixes)
        if has_body and scope["path"].startswith(JSON_ONLY_PREFIX) and not raw:
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                return problem(415, "Unsupported media type", "send the body as application/json")
        return None

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        name = getattr(scope.get("endpoint"), "__name__", "unmatched")
        self.metrics.observe(scope["method"], name, status, seconds)


class BodyTooLarge(Exception):
    """A chunked body grew past the limit while it was being read."""


def _limited(receive: Receive, limit: int) -> Receive:
    """Count body bytes as they arrive, for bodies without a Content-Length."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"the body limit here is {limit} bytes")
        return message

    return counted
