"""The one table from domain errors to HTTP status codes and WebSocket close codes,
the ``application/problem+json`` (RFC 9457) answers built from it, and how those
answers are described in the OpenAPI document (``Problem``, ``responses``).

Every JSON answer a route builds itself is serialized once, by orjson
(``JsonResponse``, ``problem``); routes that return a model leave it to FastAPI,
which serializes a model straight to JSON bytes."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.staticfiles import StaticFiles

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


class JsonResponse(JSONResponse):
    """A JSON answer serialized by orjson (Starlette's ``json.dumps`` costs several
    times as much for the same document)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return Response(orjson.dumps(body), status, headers=headers, media_type=PROBLEM_JSON)


# ------------------------------------------------------------ in the OpenAPI document


class FieldProblem(BaseModel):
    """One invalid part of a request."""

    field: str = Field(description="Where: a body field, or a path or query parameter")
    message: str


class Problem(BaseModel):
    """Every error answer (RFC 9457 problem details), as ``application/problem+json``."""

    type: str = Field(description="Always about:blank: the status says what happened")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    errors: list[FieldProblem] = Field(
        default_factory=list, description="On 422 for invalid input: each invalid field"
    )


#: What each error status means at this API, for the document.
MEANINGS = {
    400: "Malformed request: a body that is not JSON or multipart, or a missing header",
    401: "Not authenticated: no valid session cookie or bearer token",
    403: "Forbidden: a cookie-authenticated write without its X-CSRF-Token, or an admin "
    "route called without the admin role",
    404: "Not found, or not yours",
    409: "Conflict with the current state",
    413: "The body is larger than this route's limit",
    415: "Unsupported media type",
    422: "Invalid input: the fields that are wrong are listed in errors",
    429: "Too many attempts: try again after Retry-After seconds",
    503: "A store this replica needs is unavailable: try again after Retry-After seconds",
}

#: ``Retry-After`` (seconds), sent with every 429 and 503.
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}

PROBLEM_SCHEMA_REF = "#/components/schemas/Problem"


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route for the error statuses it can answer, each a
    ``Problem`` as ``application/problem+json`` (with ``Retry-After`` where sent)."""
    return {status: _problem_response(status) for status in statuses}


def _problem_response(status: int) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": MEANINGS[status],
        "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}},
    }
    if status in (429, 503):
        answer["headers"] = RETRY_AFTER
    return answer


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


TITLES = {400: "Bad request", 404: "Not found", 405: "Method not allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (allowed := allowed_methods(request)):
        headers["Allow"] = ", ".join(allowed)
    title = TITLES.get(exc.status_code, "Error")
    return problem(exc.status_code, title, str(exc.detail), headers)


#: What a folder of static files serves (it has no route per method).
STATIC_METHODS = frozenset({"GET", "HEAD"})


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path. Starlette's own ``Allow`` names
    only the first route that matched the path, and a path often has several."""
    methods: set[str] = set()
    # A mount that answered moved its prefix into root_path: match from the app's root.
    root = request.scope.get("app_root_path", request.scope.get("root_path", ""))
    scope = {**request.scope, "root_path": root}
    for route in iter_route_contexts(request.app.routes):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            static = isinstance(getattr(route, "app", None), StaticFiles)
            methods |= STATIC_METHODS if static else route.methods or set()
    return sorted(methods)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "Internal error", "the server failed; the error was logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(e.StatelabError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
