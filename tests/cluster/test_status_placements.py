"""`statelab cluster status` and the dashboard say where every kind of state lives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from statelab.cluster import dashboard
from statelab.cluster.client import format_status
from statelab.config import PROFILES, Profile

STATUS: dict[str, Any] = {
    "profile": "stateless",
    "placements": PROFILES[Profile.stateless],
    "self_heal": False,
    "shop_url": "http://127.0.0.1:8000",
    "control_url": "http://127.0.0.1:8001",
    "replicas": [],
    "workers": [],
}


def test_status_text_names_every_placement() -> None:
    text = format_status(STATUS)
    line = next(row for row in text.splitlines() if row.startswith("placements "))
    assert "cache=redis" in line.split()
    assert len(line.split()) == 1 + len(PROFILES[Profile.stateless])


@dataclass
class _Options:
    sticky: bool = False


class _Cluster:
    """What the dashboard page reads of a running cluster: its status and options."""

    options = _Options()

    def status(self) -> dict[str, Any]:
        return STATUS


async def test_the_dashboard_names_every_placement() -> None:
    app = FastAPI()
    app.state.cluster = _Cluster()
    dashboard.install(app, token=None)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8001") as c:
        page = (await c.get("/")).text
    for kind, placement in PROFILES[Profile.stateless].items():
        assert f'data-kind="{kind}">{kind}=<strong>{placement}</strong>' in page
