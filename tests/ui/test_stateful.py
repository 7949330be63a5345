"""The stateful profile in a real browser: Alice's session and cart live in the
replica that served her (the load balancer keeps her there with a cookie), so when
that replica is killed from the dashboard, the reload finds her logged out with an
empty cart.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import BrowserContext

from tests.cluster.conftest import RunningCluster
from tests.ui.support import alice_orders_a_pizza, kill_and_reload, open_dashboard, served_by

pytestmark = pytest.mark.slow


def test_stateful_cart_and_login_die_with_their_replica(
    stateful: RunningCluster, context: BrowserContext
) -> None:
    dashboard = open_dashboard(context, stateful)
    page = context.new_page()
    first = alice_orders_a_pizza(page, stateful.shop_url)
    page.reload()
    assert served_by(page) == first  # sticky: every request goes to her replica
    victim = kill_and_reload(dashboard, page)

    assert served_by(page) != victim
    assert page.locator("#anonymous").is_visible()
    assert page.locator("#cart-empty").is_visible()
    assert page.locator("#cart-lines tr").count() == 0
    assert page.locator("#cart-count").inner_text() == "0"
