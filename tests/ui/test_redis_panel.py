"""The dashboard's Redis panel with ``--redis sentinel``: every Redis process with its
role, and its buttons kill the primary and start it again, as a person would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, expect

from tests.cluster.conftest import RunningCluster, start_cluster
from tests.ui.support import WAIT_MS, open_dashboard, screenshot


@pytest.fixture(scope="module")
def sentinel_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    cluster = start_cluster(
        Path(tmp_path_factory.mktemp("sentinel")), "stateless", 1, "--redis", "sentinel"
    )
    yield cluster
    cluster.stop()


def test_the_redis_panel_kills_the_primary_and_starts_it_again(
    context: BrowserContext, sentinel_cluster: RunningCluster
) -> None:
    dashboard = open_dashboard(context, sentinel_cluster)
    rows = dashboard.locator("#redis-processes tr")
    expect(rows).to_have_count(6, timeout=WAIT_MS)
    expect(dashboard.locator("#redis-topology")).to_contain_text("sentinel")
    expect(dashboard.get_by_test_id("redis-kill")).to_have_count(0)  # one server only
    primary = dashboard.locator('#redis-processes tr:has(td:text-is("primary"))')
    expect(primary).to_have_count(1, timeout=WAIT_MS)
    name = primary.get_attribute("data-redis")
    assert name is not None
    dashboard.get_by_label(f"Kill Redis process {name} with SIGKILL (a crash)").click()
    victim = dashboard.locator(f'#redis-processes tr[data-redis="{name}"]')
    expect(victim).to_have_attribute("data-state", "down", timeout=WAIT_MS)
    # A replica is promoted: again exactly one primary, another one.
    promoted = dashboard.locator('#redis-processes tr:has(td:text-is("primary"))')
    expect(promoted).to_have_count(1, timeout=WAIT_MS)
    expect(promoted).not_to_have_attribute("data-redis", name)
    screenshot(dashboard, "dashboard-redis", full_page=True)
    dashboard.get_by_label(f"Start Redis process {name} again").click()
    expect(victim.locator("td").first).to_have_text("replica", timeout=WAIT_MS)
