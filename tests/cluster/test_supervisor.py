"""Supervisor pieces that need no cluster: options, events, leftovers of a crash."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
from pathlib import Path

import pytest

from statelab.cluster.members import Replica, http_ok, statelab_command
from statelab.cluster.runfolder import ClusterError, EventLog, reap_stale, redact, start_time
from statelab.cluster.supervisor import ClusterOptions
from statelab.config import Profile
from tests.support import PROCESS_ENV


def test_only_placements_that_need_redis_start_it() -> None:
    assert ClusterOptions(profile=Profile.stateless).needs_redis
    assert ClusterOptions(profile=Profile.token).needs_redis
    assert not ClusterOptions(profile=Profile.stateful).needs_redis
    assert ClusterOptions(profile=Profile.stateful, place={"cart": "redis"}).needs_redis


def test_balancing_is_its_own_knob() -> None:
    """Sticky by default for the stateful profile only; --balance changes it alone."""
    assert ClusterOptions(profile=Profile.stateful).sticky
    assert not ClusterOptions(profile=Profile.stateless).sticky
    assert ClusterOptions(profile=Profile.stateful, place={"session": "jwt"}).sticky
    sticky_redis = ClusterOptions(profile=Profile.stateless, balance="sticky")
    assert sticky_redis.sticky and sticky_redis.placements["session"] == "redis"
    memory_rr = ClusterOptions(profile=Profile.stateful, balance="roundrobin")
    assert not memory_rr.sticky and memory_rr.placements["session"] == "memory"
    with pytest.raises(ClusterError, match="roundrobin or sticky"):
        ClusterOptions(balance="random").check()  # type: ignore[arg-type]


def test_redis_options_are_checked() -> None:
    with pytest.raises(ClusterError, match="off, everysec, always"):
        ClusterOptions(redis_persistence="sometimes").check()
    with pytest.raises(ClusterError, match="uses Redis"):
        ClusterOptions(profile=Profile.stateful, redis_delay_proxy=True).check()


def test_workers_only_when_jobs_are_queued() -> None:
    assert ClusterOptions(profile=Profile.stateless).worker_count == 1
    assert ClusterOptions(profile=Profile.stateful).worker_count == 0
    with pytest.raises(ClusterError, match="jobs=queue"):
        ClusterOptions(profile=Profile.stateful, workers=2).check()
    with pytest.raises(ClusterError, match="between 1 and 16"):
        ClusterOptions(replicas=17).check()


def test_events_are_json_lines_with_timestamps(tmp_path: Path) -> None:
    events = EventLog(tmp_path / "events.jsonl")
    first = events.emit("replica.kill", target="r2", signal="SIGKILL")
    events.emit("lb.state", target="r2", was="UP", now="DOWN")
    events.close()
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in lines] == ["replica.kill", "lb.state"]
    assert lines[0]["ts"] < lines[1]["ts"] and lines[0]["at"].endswith("+00:00")
    assert [e["seq"] for e in lines] == [1, 2]
    assert events.since(first["ts"]) == [lines[1]]


def test_passwords_stay_out_of_status() -> None:
    assert redact("postgresql://u:secret@127.0.0.1:5/db") == "postgresql://u:***@127.0.0.1:5/db"
    assert redact("sqlite:///run/shop.db") == "sqlite:///run/shop.db"


def test_a_live_cluster_is_not_started_over(tmp_path: Path) -> None:
    me = {"pid": os.getpid(), "start_time": start_time(os.getpid())}
    (tmp_path / "cluster.json").write_text(json.dumps({"supervisor": me, "processes": {}}))
    with pytest.raises(ClusterError, match="already running"):
        reap_stale(tmp_path)


def test_what_a_crashed_supervisor_left_is_killed(tmp_path: Path) -> None:
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True)
    recycled = subprocess.Popen(["sleep", "60"], start_new_session=True)
    state = {
        "supervisor": {"pid": 999_999_999, "start_time": 1},
        "processes": {
            "r1": {"pid": orphan.pid, "start_time": start_time(orphan.pid)},
            # Same PID, another start time: not ours any more, must survive.
            "r2": {"pid": recycled.pid, "start_time": 12345},
        },
    }
    (tmp_path / "cluster.json").write_text(json.dumps(state))
    try:
        assert reap_stale(tmp_path) == ["r1"]
        assert orphan.wait(5) == -9
        assert recycled.poll() is None
        assert not (tmp_path / "cluster.json").exists()
    finally:
        for proc in (orphan, recycled):
            proc.kill()
            proc.wait()


def test_the_control_port_follows_the_shop_port_unless_chosen() -> None:
    assert ClusterOptions().wanted_control_port == 8001
    assert ClusterOptions(port=0).wanted_control_port == 0  # both chosen
    assert ClusterOptions(port=0, control_port=9100).wanted_control_port == 9100
    with pytest.raises(ClusterError, match="must differ"):
        ClusterOptions(port=9100, control_port=9100).check()
    with pytest.raises(ClusterError, match="1 to 65535"):
        ClusterOptions(port=65535).check()  # the control port would be 65536


class _Outrun(Replica):
    """A replica whose port another listener binds after our check, before uvicorn."""

    intruder: socket.socket | None = None

    def prepare(self) -> None:
        super().prepare()
        if self.intruder is None:
            self.intruder = socket.create_server(("127.0.0.1", self.port))


def test_a_replica_moves_off_a_port_taken_while_it_starts(tmp_path: Path, sqlite_url: str) -> None:
    argv = [*statelab_command(), "serve", "--profile", "stateful", "--database-url", sqlite_url]
    env = {
        **os.environ,
        **PROCESS_ENV,
        "STATELAB_SECRET_KEY": secrets.token_hex(32),
        "STATELAB_DATA_DIR": str(tmp_path / "data"),
    }
    replica = _Outrun("r1", tmp_path, argv, env)
    try:
        with replica:
            assert replica.intruder is not None
            taken = replica.intruder.getsockname()[1]
            assert replica.port != taken
            assert http_ok(replica.port)
            assert not replica.pinned, "the supervisor re-points HAProxy: it may move again"
        assert "address already in use" in replica.log_path.read_text()
    finally:
        if replica.intruder is not None:
            replica.intruder.close()
