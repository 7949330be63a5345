"""The one table from domain errors to HTTP status codes and WebSocket close codes,
and the ``application/problem+json`` (RFC 9457) answers built from it."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from statelab.domain import errors as e

log = logging.getLogger(__name__)

#: Most specific first: the first class the error is an instance of decides.
STATUS: list[tuple[type[e.StatelabError], int, int]] = [
    # (error, HTTP status, WebSocket close code)
    (e.MalformedRequest, 400, 1008),
    (e.LimitExceeded, 422, 1009),
    (e.InvalidInput, 422, 1008),
    (e.NotAuthenticated, 401, 4401),
    (e.Forbidden, 403, 4403),
    (e.NotFound, 404, 4404),
    (e.Conflict, 409, 4409),
    (e.IdempotencyMismatch, 422, 1008),
    (e.RateLimited, 429, 4429),
    (e.Unavailable, 503, 1013),
]

PROBLEM_JSON = "application/problem+json"


def status_of(exc: e.StatelabError) -> tuple[int, int]:
    """(HTTP status, WebSocket close code) for a domain error."""
    for cls, status, close_code in STATUS:
        if isinstance(exc, cls):
            return status, close_code
    return 400, 1008


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return Response(orjson.dumps(body), status, headers=headers, media_type=PROBLEM_JSON)


async def _domain_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, e.StatelabError)
    status, _close = status_of(exc)
    headers = {}
    if isinstance(exc, e.RateLimited | e.Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    return problem(status, exc.title, exc.detail, headers)


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [{"field": _where(err["loc"]), "message": err["msg"]} for err in exc.errors()]
    if any(err.get("type") == "json_invalid" for err in exc.errors()):
        return problem(400, "Malformed JSON", "the request body is not valid JSON")
    detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return problem(422, "Invalid input", detail, errors=problems)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "Error")
    return problem(exc.status_code, title, str(exc.detail), dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "Internal error", "the server failed; the error was logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(e.StatelabError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
