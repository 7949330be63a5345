"""Strict money and strict cart bodies: amounts, quantities and item ids are JSON
integers — ``true``, ``"5"``, ``1000.0`` and ``1e3`` are refused with a 422
problem, never read as a number, and nothing changes."""

from __future__ import annotations

import httpx

from statelab.domain.shop import MAX_AMOUNT_CENTS
from tests.support import register_and_login
from tests.web.conftest import ShopFactory

PROBLEM = "application/problem+json"

#: JSON values that are not an amount (the last three are integers out of range).
NOT_AMOUNTS = [
    b"true",
    b'"5"',
    b"1000.0",
    b"1e3",
    b"null",
    b"[5]",
    b"0",
    b"-5",
    str(MAX_AMOUNT_CENTS + 1).encode(),
]

#: JSON values that are not a quantity or an item id.
NOT_INTEGERS = [b"true", b'"2"', b"2.0", b"2e0", b"null"]


async def _post_raw(
    client: httpx.AsyncClient, method: str, path: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    return await client.request(
        method, path, content=body, headers={**headers, "content-type": "application/json"}
    )


def _refused(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    assert [e["field"] for e in r.json()["errors"]] == [field]


async def test_amounts_must_be_integers_within_the_maximum(shop: ShopFactory) -> None:
    client = await shop("stateless")
    headers = await register_and_login(client)
    for i, raw in enumerate(NOT_AMOUNTS):
        for path in ("/api/account/top-up", "/api/account/withdraw"):
            idem = {**headers, "Idempotency-Key": f"bad-{i}-{path}"}
            r = await _post_raw(client, "POST", path, b'{"amount_cents": ' + raw + b"}", idem)
            _refused(r, "amount_cents")
    assert (await client.get("/api/account", headers=headers)).json() == {"balance_cents": 0}

    most = await client.post(
        "/api/account/top-up",
        json={"amount_cents": MAX_AMOUNT_CENTS},
        headers={**headers, "Idempotency-Key": "most"},
    )
    assert most.json() == {"balance_cents": MAX_AMOUNT_CENTS}


async def test_cart_quantities_and_item_ids_must_be_integers(shop: ShopFactory) -> None:
    client = await shop("stateless")
    headers = await register_and_login(client)
    for raw in NOT_INTEGERS:
        add_quantity = b'{"item_id": 4, "quantity": ' + raw + b"}"
        _refused(
            await _post_raw(client, "POST", "/api/cart/items", add_quantity, headers), "quantity"
        )
        add_item = b'{"item_id": ' + raw + b', "quantity": 1}'
        _refused(await _post_raw(client, "POST", "/api/cart/items", add_item, headers), "item_id")
        set_quantity = b'{"quantity": ' + raw + b"}"
        patched = await _post_raw(client, "PATCH", "/api/cart/items/4", set_quantity, headers)
        _refused(patched, "quantity")
    assert (await client.get("/api/cart", headers=headers)).json()["items"] == []
