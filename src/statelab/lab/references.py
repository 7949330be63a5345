"""Reference servers for ``statelab bench``: what the server and the framework cost
before the shop adds anything.

- ``starlette``: a bare Starlette app answering the cart routes with a fixed JSON
  body — the cost of uvicorn, the event loop and HTTP parsing.
- ``fastapi``: the *FastAPI floor* — one route per cart call, one async dependency,
  a response model — what the framework itself costs for a trivial route.

Both answer ``GET /api/cart`` and ``POST /api/cart/items`` with a cart of two lines
shaped like the shop's, and are served by uvicorn with the replica's own settings
(``python -m statelab.lab.references NAME --port N``).
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
from starlette.routing import Route

CART: dict[str, Any] = {
    "items": [
        {"item_id": 1, "name": "Margherita", "quantity": 1, "price_cents": 900},
        {"item_id": 10, "name": "Lemonade", "quantity": 1, "price_cents": 350},
    ],
    "total_cents": 1250,
}


async def _cart(_: StarletteRequest) -> JSONResponse:
    return JSONResponse(CART)


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/api/cart", _cart, methods=["GET"]),
            Route("/api/cart/items", _cart, methods=["POST"]),
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


async def _caller(request: Request) -> str:
    """The one async dependency: who is calling (from a header, as the shop does)."""
    return request.headers.get("x-csrf-token", "")


Caller = Annotated[str, Depends(_caller)]


def fastapi_app() -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/api/cart")
    async def get_cart(caller: Caller) -> Cart:
        return Cart.model_validate(CART)

    @app.post("/api/cart/items")
    async def add_item(caller: Caller) -> Cart:
        return Cart.model_validate(CART)

    return app


APPS = {"starlette": starlette_app, "fastapi": fastapi_app}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m statelab.lab.references")
    parser.add_argument("name", choices=sorted(APPS))
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        APPS[args.name](),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        server_header=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
