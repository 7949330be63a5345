"""Reference servers for ``statelab bench``: what the server and the framework cost
before the shop adds anything.

- ``starlette``: a bare Starlette app answering the cart routes with a fixed JSON
  body — the cost of uvicorn, the event loop and HTTP parsing.
- ``fastapi``: the *FastAPI floor* — one route per cart call, one async dependency,
  a response model — what the framework itself costs for a trivial route.

Both answer ``GET /api/cart`` and ``POST /api/cart/items`` with a cart of two lines
shaped like the shop's, and are served by uvicorn with the replica's own settings
(``python -m statelab.lab.references NAME --port N``). So that the bench drives them
exactly as it drives a replica, both also take ``POST /api/auth/register`` and
``POST /api/auth/login`` (any account; the login sets a session cookie and answers a
CSRF token, as the shop's does) — those are not measured.
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

CART: dict[str, Any] = {
    "items": [
        {"item_id": 1, "name": "Margherita", "quantity": 1, "price_cents": 900},
        {"item_id": 10, "name": "Lemonade", "quantity": 1, "price_cents": 350},
    ],
    "total_cents": 1250,
}


#: What every login answers: a fixed session cookie and CSRF token of the shop's sizes.
SESSION = "s" * 43
CSRF_TOKEN = "c" * 43


async def _register(_: StarletteRequest) -> JSONResponse:
    return JSONResponse({"registered": True}, status_code=201)


async def _login(_: StarletteRequest) -> JSONResponse:
    response = JSONResponse({"csrf_token": CSRF_TOKEN})
    response.set_cookie("statelab_session", SESSION, httponly=True, samesite="lax")
    return response


async def _cart(_: StarletteRequest) -> JSONResponse:
    return JSONResponse(CART)


async def _add(request: StarletteRequest) -> JSONResponse:
    await request.body()  # the body is read, as any server must, and not interpreted
    return JSONResponse(CART)


AUTH_ROUTES: list[BaseRoute] = [
    Route("/api/auth/register", _register, methods=["POST"]),
    Route("/api/auth/login", _login, methods=["POST"]),
]


def starlette_app() -> Starlette:
    """The bare server: Starlette routing and JSON responses, nothing else."""
    return Starlette(
        routes=[
            *AUTH_ROUTES,
            Route("/api/cart", _cart, methods=["GET"]),
            Route("/api/cart/items", _add, methods=["POST"]),
        ]
    )


class Line(BaseModel):
    item_id: int
    name: str
    quantity: int
    price_cents: int


class Cart(BaseModel):
    items: list[Line]
    total_cents: int


class AddItem(BaseModel):
    item_id: int
    quantity: int


async def _caller(request: Request) -> str:
    """The one async dependency: who is calling (from a header, as the shop does)."""
    return request.headers.get("x-csrf-token", "")


Caller = Annotated[str, Depends(_caller)]


def fastapi_app() -> FastAPI:
    """The FastAPI floor: per route one async dependency and a response model (and
    for the add, a validated body, as the shop's)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, routes=AUTH_ROUTES)

    @app.get("/api/cart")
    async def get_cart(caller: Caller) -> Cart:
        return Cart.model_validate(CART)

    @app.post("/api/cart/items")
    async def add_item(body: AddItem, caller: Caller) -> Cart:
        return Cart.model_validate(CART)

    return app


APPS = {"starlette": starlette_app, "fastapi": fastapi_app}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m statelab.lab.references")
    parser.add_argument("name", choices=sorted(APPS))
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    # The replica's uvicorn settings (statelab.web.server) that touch an HTTP request.
    uvicorn.run(
        APPS[args.name](),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        proxy_headers=True,
        forwarded_allow_ips=["127.0.0.1", "::1"],
        access_log=False,
        server_header=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
