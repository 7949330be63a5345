"""Browser fixtures: Debian's Chromium driven by Playwright, and whole clusters.

The browser is ``/usr/bin/chromium`` (never a downloaded build), headless, with the
flags that keep it off the network. Clusters are ``statelab up`` processes started
the way the cluster tests start them (``tests.cluster.conftest.start_cluster``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Playwright, sync_playwright

from tests.cluster.conftest import RunningCluster, start_cluster
from tests.ui.support import CHROMIUM, CHROMIUM_ARGS, WAIT_MS


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    """Playwright's sync API for one module. While it runs it keeps an event loop
    running in this thread, so it must stop before tests that call ``asyncio.run``
    (database migrations do): module scope, never session."""
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Headless Debian Chromium for one module."""
    if not CHROMIUM.exists():
        pytest.fail("the browser tests need Debian's chromium: sudo apt-get install chromium")
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (its own cookies) for one test."""
    ctx = browser.new_context(viewport={"width": 1100, "height": 800})
    ctx.set_default_timeout(WAIT_MS)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def stateless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    """A stateless cluster of 3 replicas (and its job worker) for a module."""
    cluster = start_cluster(tmp_path_factory.mktemp("ui-stateless"), "stateless", 3)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def stateful(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    """A stateful cluster (sticky load balancing) of 2 replicas for a module."""
    cluster = start_cluster(tmp_path_factory.mktemp("ui-stateful"), "stateful", 2)
    yield cluster
    cluster.stop()
