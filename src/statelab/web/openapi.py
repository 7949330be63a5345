"""The OpenAPI document: every answer a route can give, written from one place.

A route's error answers come from four sources, and three of them are read off
the route itself, so the document cannot forget them when a route changes:

- the request's shape: a JSON body can be malformed (400) or invalid (422), and
  every path and query parameter is bounded (``params.py``: 422);
- the replica middleware (``ops.py``): a body sent with POST, PUT or PATCH can be
  too large (413) or, under ``/api/``, not JSON (415);
- the dependencies it takes (``deps.py``, the table ``DEPENDENCY_ANSWERS``);
- its own domain errors (404, 409, 429, ...), which the route declares with
  ``responses=problems.responses(...)``.

Every error is a ``Problem`` sent as ``application/problem+json``; FastAPI's own
``422 HTTPValidationError`` is replaced, as our 422 is a ``Problem`` too. The routes
are left as they are: the document FastAPI builds from them is completed once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from statelab.web import admin, deps
from statelab.web.ops import BODY_METHODS, JSON_ONLY_PREFIX
from statelab.web.params import INT64_MAX
from statelab.web.problems import FieldProblem, Problem, responses

#: What taking a dependency lets a route answer.
DEPENDENCY_ANSWERS: dict[Callable[..., Any], frozenset[int]] = {
    # A route that takes the stores uses them, and any of them can be down; so does
    # one that asks who is calling (the session store).
    deps.get_stores: frozenset({503}),
    deps.get_caller: frozenset({503}),
    deps.get_caller_unchecked: frozenset({503}),
    deps.get_shopper: frozenset({503}),
    deps.get_user: frozenset({401}),
    # A missing or malformed key (400), the same key with another body (422).
    deps.get_idempotency: frozenset({400, 422}),
    # Logged in, but without the admin role.
    admin.get_admin: frozenset({403}),
}

#: Request headers a dependency reads itself (FastAPI cannot see them).
DEPENDENCY_HEADERS: dict[Callable[..., Any], list[dict[str, Any]]] = {
    deps.get_idempotency: [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": True,
            "description": "Names this request: a retry with the same key and body "
            "is answered from the first attempt, never applied twice",
            "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[ -~]+$"},
        }
    ],
}

#: Only a cookie-authenticated write is checked for its CSRF token.
CSRF_CHECKED = frozenset({deps.get_caller, deps.get_shopper})

#: FastAPI's own description of a 422, which our answers never follow.
FASTAPI_422 = "#/components/schemas/HTTPValidationError"


def install(app: FastAPI) -> None:
    """Serve the OpenAPI document completed with each route's error answers."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _complete(build(), app)  # FastAPI keeps the dict it built: completed once
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def answers(route: RouteContext) -> set[int]:
    """The error statuses a route can answer, read off its request and dependencies."""
    found: set[int] = set()
    calls = set()
    for dependant in _dependants(route.dependant):
        calls.add(dependant.call)
        if dependant.path_params or dependant.query_params or dependant.header_params:
            found.add(422)
        if dependant.body_params:
            found |= {400, 422}
    for call, statuses in DEPENDENCY_ANSWERS.items():
        if call in calls:
            found |= statuses
    methods: set[str] = route.methods or set()
    if methods & BODY_METHODS:
        found.add(413)
        if (route.path or "").startswith(JSON_ONLY_PREFIX):
            found.add(415)
    if methods & deps.UNSAFE and CSRF_CHECKED & calls:
        found.add(403)
    return found


def _headers(route: RouteContext) -> list[dict[str, Any]]:
    calls = {dependant.call for dependant in _dependants(route.dependant)}
    return [h for call, wanted in DEPENDENCY_HEADERS.items() if call in calls for h in wanted]


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def _complete(schema: dict[str, Any], app: FastAPI) -> None:
    """Add what the routes do not describe themselves, the problem schemas, and exact
    integer bounds (FastAPI's OpenAPI model holds ``maximum`` as a float, which turns
    2**63 - 1 into 2**63)."""
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and route.include_in_schema:
            for method in route.methods or ():
                operation = schema["paths"][route.path_format][method.lower()]
                operation["responses"] = _with_answers(operation["responses"], answers(route))
                if headers := _headers(route):
                    operation.setdefault("parameters", []).extend(headers)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    ref = "#/components/schemas/{model}"
    schemas["FieldProblem"] = FieldProblem.model_json_schema(ref_template=ref)
    schemas["Problem"] = Problem.model_json_schema(ref_template=ref)
    schemas["Problem"].pop("$defs", None)
    _exact_bounds(schema)


def _with_answers(documented: dict[str, Any], statuses: set[int]) -> dict[str, Any]:
    """The responses FastAPI documented and the derived ones, in status order."""
    answered = dict(documented)
    for status, answer in responses(*statuses).items():
        key = str(status)
        if key not in answered or FASTAPI_422 in str(answered[key]):
            answered[key] = answer
    return dict(sorted(answered.items()))


def _exact_bounds(node: Any) -> None:
    if isinstance(node, dict):
        for key in ("minimum", "maximum"):
            value = node.get(key)
            if isinstance(value, float) and value.is_integer():
                node[key] = INT64_MAX if value == float(INT64_MAX) else int(value)
        for child in node.values():
            _exact_bounds(child)
    elif isinstance(node, list):
        for child in node:
            _exact_bounds(child)
