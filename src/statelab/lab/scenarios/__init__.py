"""The lab's scenarios, one module per family; adding a scenario is adding a module
that defines ``SCENARIOS`` and listing it here."""

from __future__ import annotations

from statelab.lab.framework import Scenario
from statelab.lab.scenarios import (
    balancing,
    bank,
    caching,
    capacity,
    chat,
    crash,
    latency,
    offload,
    persistence,
    tokens,
)

_FAMILIES = (crash, bank, chat, balancing, capacity, latency, persistence, offload, tokens, caching)

#: Every scenario by name, in the order the demo runs them.
SCENARIOS: dict[str, Scenario] = {s.name: s for family in _FAMILIES for s in family.SCENARIOS}

__all__ = ["SCENARIOS"]
