"""The shop: menu, cart, account balance (the ATM), checkout and orders."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from statelab.domain.errors import EmptyCart, InvalidInput, NotFound
from statelab.domain.shop import MAX_AMOUNT_CENTS, CartLines, Menu, PricedCart, price
from statelab.state.ledger import Outcome
from statelab.web.deps import (
    CSRF_HEADER,
    CallerDep,
    IdemDep,
    Shopper,
    ShopperDep,
    StoresDep,
    UserDep,
    anon_csrf_token,
    cart_ref,
    finish_cart,
)
from statelab.web.params import INT64_MAX, Count, Id, IdPath
from statelab.web.problems import JsonResponse, problem, responses, status_of

router = APIRouter(prefix="/api", tags=["shop"])

#: An ``app.state.on_order`` hook: called with a paid order and its buyer's user id.
OrderHook = Callable[[dict[str, Any], int], Awaitable[None]]


class MenuItemOut(BaseModel):
    id: int
    name: str
    kind: str
    price_cents: int


class MenuOut(BaseModel):
    items: list[MenuItemOut]


class CartLineOut(BaseModel):
    item_id: int
    name: str
    quantity: int
    price_cents: int


class CartOut(BaseModel):
    items: list[CartLineOut]
    total_cents: int


class StrictBody(BaseModel):
    """A request body whose numbers must be JSON integers: ``true`` is not 1,
    ``"5"`` is not 5 and ``1000.0`` is not 1000 (each is a 422)."""

    model_config = ConfigDict(strict=True)


class AddItem(StrictBody):
    item_id: Id
    quantity: Count = Field(default=1)


class SetQuantity(StrictBody):
    quantity: Count


class Amount(StrictBody):
    amount_cents: int = Field(
        gt=0, le=MAX_AMOUNT_CENTS, description="Integer cents, at most one request's maximum"
    )


class Checkout(StrictBody):
    expected_total_cents: int = Field(
        ge=0,
        le=INT64_MAX,
        description="The cart total the customer was shown (integer cents): if the cart "
        "costs anything else now, checkout answers 409 'Price changed' and charges nothing",
    )


class Balance(BaseModel):
    balance_cents: int


class OrderLine(BaseModel):
    item_id: int
    name: str
    quantity: int
    price_cents: int


class OrderOut(BaseModel):
    id: int
    status: str
    total_cents: int
    items: list[OrderLine]
    created_at: str
    receipt: str | None


class CheckoutOut(OrderOut):
    balance_cents: int


class OrdersOut(BaseModel):
    orders: list[OrderOut]


def menu_out(menu: Menu) -> MenuOut:
    return MenuOut(items=[MenuItemOut(**asdict(item)) for item in menu.items])


@router.get("/menu")
async def menu(stores: StoresDep) -> MenuOut:
    """The menu with its prices, through the cache placement (a ``memory`` cache may
    show a price changed through another replica up to ``cache_ttl_seconds`` late)."""
    return menu_out(await stores.menu.cached())


def cart_document(priced: PricedCart) -> dict[str, Any]:
    """A priced cart as the ``CartOut`` document, built directly: the cart answers are
    the hot path, and models built only to be dumped again (then ``json.dumps``) cost
    ~30 µs a request, more than reading the cart."""
    items = [
        {
            "item_id": line.item_id,
            "name": line.name,
            "quantity": line.quantity,
            "price_cents": line.price_cents,
        }
        for line in priced.lines
    ]
    return {"items": items, "total_cents": priced.total_cents}


def _cart_response(shopper: Shopper, lines: CartLines) -> Response:
    """The whole cart, priced from the menu read with the session (through the cache
    placement, like ``GET /api/menu``)."""
    response = JsonResponse(cart_document(price(lines, shopper.menu)))
    caller, stores = shopper.caller, shopper.stores
    if shopper.ref is not None:
        finish_cart(shopper.request, response, stores, caller, shopper.ref)
    if caller.session is None and caller.anon_id is not None:
        token = anon_csrf_token(stores.keys.csrf, caller.anon_id)
        response.headers[CSRF_HEADER] = token
    return response


def _known_item(menu: Menu, item_id: int, *, in_path: bool) -> int:
    try:
        menu.get(item_id)
    except NotFound:
        if in_path:
            raise
        raise InvalidInput(f"menu item {item_id} does not exist") from None
    return item_id


@router.get("/cart", response_model=CartOut)
async def get_cart(shopper: ShopperDep) -> Response:
    """The caller's cart, priced (its session, cart and the menu read in one round trip)."""
    return _cart_response(shopper, shopper.lines or {})


@router.post("/cart/items", response_model=CartOut)
async def add_item(body: AddItem, shopper: ShopperDep) -> Response:
    """Add ``quantity`` to a line, creating it. Answers with the whole cart."""
    item_id = _known_item(shopper.menu, body.item_id, in_path=False)
    lines = await shopper.stores.carts.add(shopper.cart(), {item_id: body.quantity})
    return _cart_response(shopper, lines)


@router.patch("/cart/items/{item_id}", response_model=CartOut, responses=responses(404))
async def set_item(item_id: IdPath, body: SetQuantity, shopper: ShopperDep) -> Response:
    """Set a line's quantity (0 removes it)."""
    known = _known_item(shopper.menu, item_id, in_path=True)
    lines = await shopper.stores.carts.set(shopper.cart(), known, body.quantity)
    return _cart_response(shopper, lines)


@router.delete("/cart/items/{item_id}", response_model=CartOut, responses=responses(404))
async def delete_item(item_id: IdPath, shopper: ShopperDep) -> Response:
    known = _known_item(shopper.menu, item_id, in_path=True)
    lines = await shopper.stores.carts.set(shopper.cart(), known, 0)
    return _cart_response(shopper, lines)


@router.get("/account")
async def account(stores: StoresDep, user: UserDep) -> Balance:
    return Balance(balance_cents=await stores.ledger.balance(user.user_id))


def _answer(outcome: Outcome) -> Response:
    """What the ledger did, as HTTP: 200 applied, 201 created, a refusal as its
    problem (409); a replay says so in ``Idempotent-Replayed``."""
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
    if outcome.refusal is not None:
        status, _close = status_of(outcome.refusal)
        return problem(status, outcome.refusal.title, outcome.refusal.detail, headers)
    return JsonResponse(outcome.body, 201 if outcome.kind == "created" else 200, headers)


@router.post("/account/top-up", response_model=Balance)
async def top_up(body: Amount, stores: StoresDep, user: UserDep, idem: IdemDep) -> Response:
    return _answer(await stores.ledger.top_up(user.user_id, body.amount_cents, idem))


@router.post("/account/withdraw", response_model=Balance, responses=responses(409))
async def withdraw(body: Amount, stores: StoresDep, user: UserDep, idem: IdemDep) -> Response:
    """The ATM: 409 and no change when the balance is too low."""
    return _answer(await stores.ledger.withdraw(user.user_id, body.amount_cents, idem))


def _price_changed(priced: PricedCart, shown: int) -> Response:
    """409: the cart costs something else than the customer was shown. The body
    carries the repriced cart, so a client can show it and ask again."""
    detail = (
        f"the cart now costs {priced.total_cents} cents, not the {shown} cents shown: nothing "
        f"was charged; check out again with expected_total_cents {priced.total_cents}"
    )
    cart = cart_document(priced)
    return problem(
        409, "Price changed", detail, total_cents=cart["total_cents"], items=cart["items"]
    )


@router.post("/checkout", status_code=201, response_model=CheckoutOut, responses=responses(409))
async def checkout(
    body: Checkout,
    request: Request,
    stores: StoresDep,
    caller: CallerDep,
    user: UserDep,
    idem: IdemDep,
) -> Response:
    """Pay the cart from the balance and create an order; the cart is emptied.

    The cart is priced from the menu in SQL, never from a cache. If that total is not
    ``expected_total_cents`` (a price changed since the customer saw the cart), the
    answer is 409 "Price changed" with the new ``total_cents`` and ``items``, and
    nothing is charged: no one pays a price they were not shown."""
    ref = cart_ref(request, caller)
    priced = price(await stores.carts.get(ref), await stores.menu.current())
    if not priced.lines or priced.total_cents != body.expected_total_cents:
        # A retry of a checkout that succeeded finds the cart empty (or refilled and
        # repriced): replay it.
        replay = await stores.ledger.replay(user.user_id, idem)
        if replay is not None:
            return _answer(replay)
        if not priced.lines:
            raise EmptyCart("the cart is empty")
        return _price_changed(priced, body.expected_total_cents)
    outcome = await stores.ledger.checkout(user.user_id, priced, idem)
    response = _answer(outcome)
    if outcome.kind == "created" and not outcome.replayed:
        await stores.carts.clear(ref)
        finish_cart(request, response, stores, caller, ref)
        hooks: list[OrderHook] = getattr(request.app.state, "on_order", [])
        for hook in hooks:
            await hook(outcome.body, user.user_id)
    return response


@router.get("/orders")
async def orders(stores: StoresDep, user: UserDep) -> OrdersOut:
    found = await stores.ledger.orders(user.user_id)
    return OrdersOut(orders=[OrderOut(**o) for o in found])


@router.get("/orders/{order_id}", responses=responses(404))
async def order(order_id: IdPath, stores: StoresDep, user: UserDep) -> OrderOut:
    return OrderOut(**await stores.ledger.order(user.user_id, order_id))
