"""The stateless profile in a real browser: chat across replicas, a photo and its
thumbnail, and Alice's cart surviving the replica that served it.

One cluster serves the module; the kill test runs last and restarts its victim.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Browser, BrowserContext, ElementHandle, Page, expect

from statelab.jobs import THUMBNAIL_SIZE
from tests.cluster.conftest import RunningCluster
from tests.ui.support import (
    PASSWORD,
    WAIT_MS,
    alice_orders_a_pizza,
    kill_and_reload,
    new_username,
    open_dashboard,
    register,
    screenshot,
    served_by,
    start_from_dashboard,
)

pytestmark = pytest.mark.slow


def _chat_page(browser: Browser, base_url: str, username: str, phone: bool) -> Page:
    size = {"width": 390, "height": 844} if phone else {"width": 1100, "height": 800}
    context = browser.new_context(viewport=size)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    register(page, base_url, username, then="/chat")
    page.locator("#conn.up").wait_for()
    return page


def _online(page: Page, user: str, online: bool) -> None:
    page.locator(f'#online li[data-user="{user}"][data-online="{str(online).lower()}"]').wait_for()


def test_two_browsers_chat_through_different_replicas(
    stateless: RunningCluster, browser: Browser
) -> None:
    first, second = stateless.status()["replicas"][:2]
    alice, bob = new_username("alice"), new_username("bob")
    a = _chat_page(browser, first["url"], alice, phone=False)
    b = _chat_page(browser, second["url"], bob, phone=True)
    try:
        assert (served_by(a), served_by(b)) == (first["id"], second["id"])

        a.get_by_label("New room").fill("pizza night")
        a.get_by_role("button", name="Create").click()
        expect(a.locator("#room-id")).not_to_be_empty()
        room = a.locator("#room-id").inner_text()
        b.get_by_label("Join a room by its id").fill(room)
        b.get_by_role("button", name="Join").click()
        b.wait_for_url(f"**/chat?room={room}")
        expect(b.locator("#room-title")).to_have_text("pizza night")
        b.locator("#conn.up").wait_for()
        _online(a, bob, True)
        _online(b, alice, True)

        a.get_by_label("Message", exact=True).fill("margherita at eight?")
        a.get_by_role("button", name="Send").click()
        b.locator("#log li", has_text="margherita at eight?").wait_for()

        b.get_by_label("Message", exact=True).press_sequentially("yes, and a tiramisu", delay=20)
        a.locator("#typing", has_text=f"{bob} is typing").wait_for()
        b.get_by_role("button", name="Send").click()
        a.locator("#log li", has_text="yes, and a tiramisu").wait_for()
        screenshot(a, "chat")
        screenshot(b, "chat-phone")

        # Alice looks at another room; what Bob says meanwhile shows as unread.
        a.get_by_label("New room").fill("desserts")
        a.get_by_role("button", name="Create").click()
        expect(a.locator("#room-title")).to_have_text("desserts")
        b.get_by_label("Message", exact=True).fill("see you there")
        b.get_by_role("button", name="Send").click()
        expect(a.get_by_test_id(f"unread-{room}")).to_have_text("1")
        a.get_by_role("button", name="pizza night").click()
        a.locator("#log li", has_text="see you there").wait_for()
        expect(a.get_by_test_id(f"unread-{room}")).to_have_text("")

        b.context.close()  # bob leaves: his socket closes, alice sees him go
        _online(a, bob, False)
        texts = a.locator("#log li .text").all_inner_texts()
        assert texts == ["margherita at eight?", "yes, and a tiramisu", "see you there"]
        assert a.locator("#log li .author").all_inner_texts() == [alice, bob, bob]
    finally:
        a.context.close()
        if b.context.pages:
            b.context.close()


def _photo(path: Path) -> Path:
    image = Image.new("RGB", (800, 600), (250, 240, 225))
    draw = ImageDraw.Draw(image)
    draw.ellipse((100, 50, 700, 550), fill=(230, 180, 60), outline=(160, 30, 30), width=30)
    for x, y in ((300, 200), (480, 260), (360, 400)):
        draw.ellipse((x, y, x + 70, y + 70), fill=(170, 30, 30))
    image.save(path, "PNG")
    return path


def _wait_loaded(page: Page, img: ElementHandle) -> None:
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img)


def test_uploaded_photo_shows_its_thumbnail(
    stateless: RunningCluster, context: BrowserContext, tmp_path: Path
) -> None:
    page = context.new_page()
    register(page, stateless.shop_url, new_username("carol"), then="/photos")
    page.get_by_label("Photo (JPEG, PNG or WebP").set_input_files(_photo(tmp_path / "pizza.png"))
    page.get_by_role("button", name="Upload").click()
    page.get_by_text("Uploaded pizza.png.").wait_for()

    thumbnail = page.get_by_role("img", name="Thumbnail of pizza.png")
    thumbnail.wait_for()  # made by the job worker, found by polling /api/files
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle()
    )
    width, height = thumbnail.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert (width, height) == (THUMBNAIL_SIZE, THUMBNAIL_SIZE * 3 // 4)
    screenshot(page, "photos")

    page.reload()  # any replica: the photo and thumbnail are in the object store
    again = page.get_by_role("img", name="Thumbnail of pizza.png")
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=again.element_handle()
    )


def _set_price(cluster: RunningCluster, admin: str, price_cents: int) -> None:
    """Change the Margherita's price as an admin, through the shop's JSON API."""
    with httpx.Client(base_url=cluster.shop_url, timeout=WAIT_MS / 1000) as client:
        creds = {"username": admin, "password": PASSWORD}
        client.post("/api/auth/register", json=creds)
        cluster.control.grant_admin(admin)
        login = client.post("/api/auth/login", json=creds)
        assert login.status_code == 200, login.text
        headers = {"X-CSRF-Token": login.json()["csrf_token"]}
        r = client.put("/api/admin/menu/1", json={"price_cents": price_cents}, headers=headers)
        assert r.status_code == 200, r.text


def test_checkout_shows_a_changed_price_instead_of_charging_it(
    stateless: RunningCluster, context: BrowserContext
) -> None:
    page = context.new_page()
    register(page, stateless.shop_url, new_username("paula"), then="/account")
    page.get_by_label("Top up (€)").fill("50")
    page.get_by_role("button", name="Top up").click()
    expect(page.get_by_test_id("balance")).to_have_text("€50.00")
    page.goto(f"{stateless.shop_url}/menu")
    page.get_by_role("button", name="Add Margherita to the cart").click()
    page.get_by_text("Added Margherita to the cart.").wait_for()
    page.goto(f"{stateless.shop_url}/cart")
    expect(page.get_by_test_id("cart-total")).to_have_text("€9.00")

    admin = new_username("boss")
    _set_price(stateless, admin, 1000)
    try:
        page.get_by_test_id("checkout").click()
        expect(page.locator(".message.error")).to_contain_text("it now costs €10.00")
        expect(page.get_by_test_id("cart-total")).to_have_text("€10.00")
        page.get_by_test_id("checkout").click()
        expect(page.locator(".message.ok")).to_contain_text("paid: €10.00. Balance now €40.00")
    finally:
        _set_price(stateless, admin, 900)  # the module's other tests expect the seed


def test_stateless_cart_and_login_survive_a_killed_replica(
    stateless: RunningCluster, context: BrowserContext
) -> None:
    dashboard = open_dashboard(context, stateless)
    page = context.new_page()
    alice_orders_a_pizza(page, stateless.shop_url)
    username = page.locator("#username").inner_text()
    victim = kill_and_reload(dashboard, page)

    assert served_by(page) != victim
    assert page.locator("#username").inner_text() == username
    assert page.locator("#cart-lines tr").count() == 1
    assert page.locator("#cart-lines").inner_text().startswith("Margherita")
    assert page.locator("#cart-count").inner_text() == "1"
    screenshot(page, "cart")

    start_from_dashboard(dashboard, victim)  # leave the module's cluster whole
