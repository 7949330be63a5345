"""The demo journey on real replica processes: shared stores keep Alice, memory loses her."""

from __future__ import annotations

import pytest

from statelab.lab.journey import run


@pytest.mark.slow
def test_journey_shows_what_each_profile_keeps() -> None:
    stateless, stateful = run(("stateless", "stateful"))
    assert stateless.session_survived
    assert stateless.cart_seen_on_r2 == 1
    assert stateless.balance_seen_on_r2 == 2000
    assert not stateful.session_survived
    assert stateful.cart_seen_on_r2 == 0
    assert [s.replica for s in stateless.steps][-3:] == ["r2", "r2", "r2"]
