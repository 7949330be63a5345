"""Pure shop rules."""

from __future__ import annotations

import pytest

from statelab.domain.errors import InvalidInput, LimitExceeded, NotFound
from statelab.domain.shop import CartLimits, load_menu, positive_amount, price


def test_menu_has_unique_ids_and_integer_prices() -> None:
    menu = load_menu()
    ids = [item.id for item in menu.items]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i.price_cents, int) and i.price_cents > 0 for i in menu.items)
    with pytest.raises(NotFound):
        menu.get(12345)


def test_price_sums_in_cents_and_skips_unknown_items() -> None:
    priced = price({1: 2, 10: 1, 999: 4}, load_menu())
    assert [line.item_id for line in priced.lines] == [1, 10]
    assert priced.total_cents == 2 * 900 + 350


def test_cart_limits() -> None:
    limits = CartLimits(max_lines=2, max_quantity=3)
    limits.check_quantity(3)
    limits.check_quantity(0, allow_zero=True)
    for bad in (0, 4, -1):
        with pytest.raises(LimitExceeded):
            limits.check_quantity(bad)
    with pytest.raises(LimitExceeded):
        limits.check_lines({1: 1, 2: 1, 3: 1})


def test_amounts_are_positive_and_bounded() -> None:
    assert positive_amount(1) == 1
    for bad in (0, -1, 10**9):
        with pytest.raises(InvalidInput):
            positive_amount(bad)
