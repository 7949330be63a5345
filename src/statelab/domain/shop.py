"""Pure shop rules: the menu, carts priced from it, money in integer cents."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from statelab.domain.errors import InvalidInput, LimitExceeded, NotFound

#: A cart as stored by every placement: menu item id -> quantity (> 0).
CartLines = dict[int, int]


@dataclass(frozen=True, slots=True)
class MenuItem:
    id: int
    name: str
    kind: str
    price_cents: int


@dataclass(frozen=True, slots=True)
class Menu:
    """The items on sale, in menu order. ``version`` grows with every price change
    (0 for the packaged seed), so of two copies the newer one is known."""

    items: tuple[MenuItem, ...]
    version: int = 0
    #: The items by id, made once per menu: every cart answer prices from it.
    by_id: Mapping[int, MenuItem] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_id", {item.id: item for item in self.items})

    def get(self, item_id: int) -> MenuItem:
        item = self.by_id.get(item_id)
        if item is None:
            raise NotFound(f"menu item {item_id} does not exist")
        return item


@cache
def load_menu() -> Menu:
    """The menu shipped with the package (``domain/menu.json``): the seed the schema
    migration writes into SQL. At runtime the menu and its prices come from SQL."""
    raw = json.loads(resources.files(__package__).joinpath("menu.json").read_text("utf-8"))
    return Menu(tuple(MenuItem(**item) for item in raw["items"]))


@dataclass(frozen=True, slots=True)
class CartLimits:
    max_lines: int
    max_quantity: int

    def check_quantity(self, quantity: int, *, allow_zero: bool = False) -> None:
        low = 0 if allow_zero else 1
        if not low <= quantity <= self.max_quantity:
            raise LimitExceeded(f"quantity must be between {low} and {self.max_quantity}")

    def check_lines(self, lines: CartLines) -> None:
        if len(lines) > self.max_lines:
            raise LimitExceeded(f"a cart holds at most {self.max_lines} different items")


@dataclass(frozen=True, slots=True)
class PricedLine:
    item_id: int
    name: str
    quantity: int
    price_cents: int


@dataclass(frozen=True, slots=True)
class PricedCart:
    lines: tuple[PricedLine, ...]
    total_cents: int


def price(lines: CartLines, menu: Menu) -> PricedCart:
    """Price a cart from the menu, in menu order, ignoring items no longer on it."""
    known = menu.by_id
    priced = tuple(
        PricedLine(item_id, known[item_id].name, qty, known[item_id].price_cents)
        for item_id, qty in sorted(lines.items())
        if item_id in known and qty > 0
    )
    return PricedCart(priced, sum(line.quantity * line.price_cents for line in priced))


#: The most one request may move: 100 000.00, far beyond any pizza order, and small
#: enough that no plausible number of top-ups overflows a 64-bit balance column.
MAX_AMOUNT_CENTS = 10_000_000


#: The highest price an admin may set for one item: the most one request may move.
MAX_PRICE_CENTS = MAX_AMOUNT_CENTS


def positive_amount(amount_cents: int, *, limit: int = MAX_AMOUNT_CENTS) -> int:
    """Money moved by one request: positive integer cents, at most ``limit``."""
    if isinstance(amount_cents, bool) or not 0 < amount_cents <= limit:
        raise InvalidInput(f"amount_cents must be an integer between 1 and {limit}")
    return amount_cents


def valid_price(price_cents: int) -> int:
    """A price an item may have: positive integer cents, at most ``MAX_PRICE_CENTS``."""
    if isinstance(price_cents, bool) or not 0 < price_cents <= MAX_PRICE_CENTS:
        raise InvalidInput(f"price_cents must be an integer between 1 and {MAX_PRICE_CENTS}")
    return price_cents
