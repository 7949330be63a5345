"""What the browser tests do as a person would: register, read the badge, use the
dashboard; and screenshots.

Set ``STATELAB_SCREENSHOTS=DIR`` to have the tests save the pages they visit as
small PNGs (the README's screenshots are made that way).
"""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path

from PIL import Image
from playwright.sync_api import BrowserContext, Page

from tests.cluster.conftest import RunningCluster

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery"
#: Long enough for a replica to start or HAProxy to notice a dead one; every wait
#: in these tests is bounded by it.
WAIT_MS = 20_000


def control_url(cluster: RunningCluster) -> str:
    return str(cluster.control.base_url)


def new_username(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def register(page: Page, base_url: str, username: str, then: str = "/menu") -> None:
    """Register and log in through the pages, landing on ``then``."""
    page.goto(f"{base_url}/register?next={then}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Register and log in").click()
    page.wait_for_url(f"**{then}")
    assert page.locator("#username").inner_text() == username


def served_by(page: Page) -> str:
    return page.locator("#served-by").inner_text().strip()


def screenshot(page: Page, name: str, *, full_page: bool = False) -> None:
    """Save the page as ``$STATELAB_SCREENSHOTS/name.png``, palette-compressed."""
    folder = os.environ.get("STATELAB_SCREENSHOTS")
    if not folder:
        return
    page.evaluate("window.scrollTo(0, 0)")
    image = Image.open(io.BytesIO(page.screenshot(full_page=full_page, animations="disabled")))
    small = image.convert("RGB").quantize(colors=96, method=Image.Quantize.MEDIANCUT)
    Path(folder).mkdir(parents=True, exist_ok=True)
    small.save(Path(folder) / f"{name}.png", optimize=True)


def kill_from_dashboard(dashboard: Page, rid: str) -> None:
    """Click "Kill -9" for ``rid`` and wait until HAProxy has taken it out."""
    dashboard.get_by_role("button", name=f"Kill {rid} with SIGKILL (a crash)").click()
    dashboard.locator(f'tr[data-replica="{rid}"][data-state="down"]').wait_for()
    dashboard.locator(f'#events li[data-event="replica.kill"][data-target="{rid}"]').wait_for()


def start_from_dashboard(dashboard: Page, rid: str) -> None:
    """Click "Start" for ``rid`` and wait until it is back in rotation."""
    dashboard.get_by_role("button", name=f"Start {rid} or put it back in rotation").click()
    dashboard.locator(f'tr[data-replica="{rid}"][data-state="up"]').wait_for()


def alice_orders_a_pizza(page: Page, shop_url: str) -> str:
    """Log in, add a Margherita, open the cart; the replica that served the cart."""
    register(page, shop_url, new_username("alice"))
    page.get_by_role("button", name="Add Margherita to the cart").click()
    page.get_by_text("Added Margherita to the cart.").wait_for()
    assert page.locator("#cart-count").inner_text() == "1"
    screenshot(page, "menu")
    page.goto(f"{shop_url}/cart")
    assert page.locator("#cart-lines tr").count() == 1
    assert page.locator("#cart-lines").inner_text().startswith("Margherita")
    return served_by(page)


def open_dashboard(context: BrowserContext, cluster: RunningCluster) -> Page:
    """The lab dashboard in a tab of its own (opened first, its chart sees everything)."""
    dashboard = context.new_page()
    dashboard.goto(control_url(cluster))
    dashboard.locator("#link.up").wait_for()
    return dashboard


def kill_and_reload(dashboard: Page, page: Page) -> str:
    """Kill the replica that served ``page`` from the dashboard, then reload the page;
    the killed replica's id."""
    victim = served_by(page)
    kill_from_dashboard(dashboard, victim)
    screenshot(dashboard, "dashboard", full_page=True)
    page.reload()
    return victim
