"""Cluster options with the SQL, pure-token and timer placements: what needs Redis
and a worker, and an impossible combination refused before anything starts."""

from __future__ import annotations

import pytest

from statelab.cluster.runfolder import ClusterError
from statelab.cluster.supervisor import ClusterOptions
from statelab.config import Profile


def test_sql_sessions_carts_and_pure_tokens_need_no_redis() -> None:
    place = {"session": "db", "cart": "db"}
    assert not ClusterOptions(profile=Profile.stateful, place=place).needs_redis
    pure = ClusterOptions(profile=Profile.stateful, place={"session": "jwt-pure"})
    assert not pure.needs_redis and pure.placements["session"] == "jwt-pure"


def test_a_scheduler_needs_the_queue_and_its_worker() -> None:
    options = ClusterOptions(profile=Profile.stateless)
    assert options.placements["timers"] == "scheduler" and options.worker_count == 1
    assert ClusterOptions(profile=Profile.stateful).placements["timers"] == "inprocess"
    # An override that leaves no worker: the profile's scheduler gives way...
    inproc = ClusterOptions(profile=Profile.stateless, place={"jobs": "inprocess"})
    inproc.check()
    assert inproc.placements["timers"] == "inprocess" and inproc.worker_count == 0
    # ...but one asked for is refused, naming the option.
    asked = ClusterOptions(profile=Profile.stateful, place={"timers": "scheduler"})
    with pytest.raises(ClusterError, match="timers=scheduler needs jobs=queue"):
        asked.check()
    assert asked.needs_redis
