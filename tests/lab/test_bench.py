"""``statelab bench``: wrk's output is read right, servers are pinned where the bench
says, ratios and turns are computed as documented, and short runs have the promised
shape with no failed request (a correctness check; the numbers are not judged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from statelab.cli import app
from statelab.cluster.cgroups import CpuQuota, pin
from statelab.cluster.servers import PortedProcess
from statelab.lab import load
from statelab.lab.bench import (
    COLUMNS,
    PROFILES,
    REFERENCES,
    Pinning,
    Round,
    Target,
    _efficiency,
    add_ratios,
    plan_pinning,
    summarize,
    take_turns,
)
from statelab.lab.load import parse_wrk
from tests.support import answers_ok

WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:40001
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.10ms    4.30ms  80.01ms   90.00%
  Latency Distribution
     50%   11.70ms
     75%   13.20ms
     90%   15.90ms
     99%    1.27s
  13080 requests in 5.00s, 3.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2616.12
Transfer/sec:    634.50KB
"""


def test_parse_wrk_reads_rate_percentiles_requests_and_every_kind_of_error() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result.rps == pytest.approx(2616.12)
    assert result.p50_ms == pytest.approx(11.7)
    assert result.p99_ms == pytest.approx(1270.0)
    assert result.errors == 4 + 2 + 1 and result.non_2xx == 4
    assert result.requests == 13080


def test_wrk_runs_as_the_users_and_reports_a_rising_latency_distribution(tmp_path: Path) -> None:
    reference = PortedProcess(
        "starlette",
        tmp_path,
        lambda port: [sys.executable, "-m", "statelab.lab.references", "starlette",
                      "--port", str(port)],
        ready=lambda port: answers_ok(f"http://127.0.0.1:{port}/api/cart"),
    )  # fmt: skip
    with reference:
        url, users = f"http://{reference.address}", tmp_path / "users"
        load.login_users(url, 3, users, cart=load.READ_CART)
        assert load.cart_of_first(url, users) == load.READ_CART
        result = load.wrk(url, users, 2, 1, workload="read")
    assert result.errors == 0 and result.requests > 0
    assert len(result.cdf_ms) == 50 and result.cdf_ms[0] > 0
    assert result.cdf_ms == sorted(result.cdf_ms)  # the 100 % point is the slowest request
    assert [line.split("\t")[1] for line in users.read_text().splitlines()] == [
        "X-CSRF-Token: " + "c" * 43
    ] * 3


def test_servers_get_the_first_cpu_and_everything_else_the_rest() -> None:
    assert plan_pinning({0, 1}) == Pinning(servers=(0,), load=(1,), available=2)
    assert plan_pinning({7, 3, 5}) == Pinning(servers=(3,), load=(5, 7), available=3)
    alone = plan_pinning({0})
    assert not alone.pinned and alone.servers == alone.load == ()
    assert alone.describe().startswith("not pinned: 1 CPU")
    assert plan_pinning({0, 1}).as_json()["note"].startswith("each server under test on CPU 0")


# Starts two threads and a child process, says so, and on "go" starts one more
# thread and prints the CPUs that thread may use.
THREADED = """
import json, os, subprocess, sys, threading
stop = threading.Event()
for _ in range(2):
    threading.Thread(target=stop.wait, daemon=True).start()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
sys.stdin.readline()
seen = []
later = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))
later.start(); later.join()
print(json.dumps(seen[0]), flush=True)
child.kill()
"""


def test_pin_moves_every_thread_its_children_and_what_it_starts_later() -> None:
    target = {max(os.sched_getaffinity(0))}
    argv = [sys.executable, "-c", THREADED]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        child = int(proc.stdout.readline())
        pinned = pin(proc.pid, target, children=True)
        threads = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        assert pinned >= len(threads) + 1 >= 4  # main, two waiting threads, the child
        assert all(os.sched_getaffinity(tid) == target for tid in threads)
        assert os.sched_getaffinity(child) == target
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline()) == sorted(target)
        proc.stdin.close()
        assert proc.wait(10) == 0


def test_a_cpu_quota_holds_a_process_to_its_share_until_released() -> None:
    quota = CpuQuota(0.2)
    assert quota.root is not None, "the scale-out curve needs a writable cpu cgroup: " + quota.note
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as proc:
        try:
            quota.limit("r1", proc.pid)
            group = quota.groups["r1"]
            assert str(proc.pid) in (group / "cgroup.procs").read_text().split()
            if quota.root.name == "cpu":  # cgroup v1
                period = int((group / "cpu.cfs_period_us").read_text())
                assert (period, int((group / "cpu.cfs_quota_us").read_text())) == (100_000, 20_000)
            else:
                assert (group / "cpu.max").read_text().split() == ["20000", "100000"]
            assert "0.2 CPU" in quota.note
        finally:
            quota.release()
            proc.kill()
    assert not group.exists() and quota.groups == {}


def test_pin_names_a_process_that_is_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(ProcessLookupError, match=str(proc.pid)):
        pin(proc.pid, {0})


def _round(rps: float, cpu: float, errors: int = 0) -> Round:
    return Round(rps=rps, p50_ms=1.0, p99_ms=5.0, errors=errors, requests=100,
                 cpu_us_per_request=cpu)  # fmt: skip


def test_a_summary_is_the_median_of_the_rounds_with_every_round_kept() -> None:
    summary = summarize([_round(900, 250), _round(1200, 200, errors=1), _round(1000, 300)])
    assert summary["rps"] == 1000 and summary["cpu_us_per_request"] == 250
    assert summary["rounds_rps"] == [900, 1200, 1000]
    assert summary["rounds_cpu_us"] == [250, 200, 300]
    assert summary["errors"] == 1 and summary["requests"] == 300


def test_ratios_are_to_stateful_and_to_the_fastapi_floor_higher_is_better() -> None:
    profiles = {
        "stateful": {"rps": 1000.0, "cpu_us_per_request": 200.0},
        "stateless": {"rps": 800.0, "cpu_us_per_request": 250.0},
    }
    references = {
        "starlette": {"rps": 5000.0, "cpu_us_per_request": 40.0},
        "fastapi": {"rps": 2000.0, "cpu_us_per_request": 100.0},
    }
    add_ratios(profiles, references)
    assert profiles["stateful"] | {} == {
        "rps": 1000.0, "cpu_us_per_request": 200.0,
        "ratio": 1.0, "cpu_ratio": 1.0, "ratio_to_floor": 0.5,
    }  # fmt: skip
    assert profiles["stateless"]["ratio"] == 0.8
    assert profiles["stateless"]["cpu_ratio"] == 0.8
    assert profiles["stateless"]["ratio_to_floor"] == 0.4
    assert references["fastapi"]["ratio_to_floor"] == 1.0
    assert references["starlette"]["ratio_to_floor"] == 2.5
    alone = {"token": {"rps": 900.0, "cpu_us_per_request": 300.0}}
    add_ratios(alone, {})
    assert alone["token"]["ratio"] is None and alone["token"]["ratio_to_floor"] is None


def test_servers_take_turns_starting_one_further_along_each_round() -> None:
    order: list[str] = []

    def run(target: Target) -> Round:
        order.append(target.name)
        return _round(1, 1)

    targets = [Target(name, "", 0, Path()) for name in "abc"]
    take_turns(targets, 4, run)
    assert "".join(order) == "abc" + "bca" + "cab" + "abc"
    assert all(len(t.rounds) == 4 for t in targets)


def test_scale_out_efficiency_is_per_replica_and_per_added_replica() -> None:
    curve = [{"replicas": n, "rps": rps} for n, rps in ((1, 1000.0), (2, 1900.0), (3, 2700.0))]
    _efficiency(curve)
    assert [p["efficiency"] for p in curve] == [1.0, 0.95, 0.9]
    assert [p["marginal"] for p in curve] == [1.0, 0.9, 0.8]


def test_the_chat_workload_says_when_its_measurement_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "statelab.lab.chatload", None)  # as if not installed
    result = CliRunner().invoke(app, ["bench", "--workload", "chat", "--seconds", "1"])
    assert result.exit_code == 2
    assert "the chat workload is not available" in result.output


def test_an_unknown_column_is_refused_before_anything_starts() -> None:
    result = CliRunner().invoke(app, ["bench", "--columns", "stateful,nope"])
    assert result.exit_code == 2 and "nope" in result.output and "jwt-pure" in result.output


def _check_server(name: str, measured: dict[str, object], rounds: int) -> None:
    assert measured["errors"] == 0, name
    rps, cpu = measured["rps"], measured["cpu_us_per_request"]
    assert isinstance(rps, float) and isinstance(cpu, float)
    assert rps > 0 and cpu > 0, name
    assert 0 < measured["p50_ms"] <= measured["p99_ms"], name  # type: ignore[operator]
    assert len(measured["rounds_rps"]) == len(measured["rounds_cpu_us"]) == rounds, name  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_short_read_bench_measures_every_column_and_both_references_pinned(
    tmp_path: Path,
) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--workload", "read", "--json", str(out), "--seconds", "1"]
    argv += ["--rounds", "2", "--connections", "4", "--max-replicas", "0", "--markdown"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    bench = json.loads(out.read_text())
    assert (
        bench["version"] == 2 and bench["workload"] == "read" and "wrk" in bench["load_generator"]
    )
    assert bench["pinning"]["pinned"] == (len(os.sched_getaffinity(0)) >= 2)
    assert set(bench["profiles"]) == set(PROFILES) and set(bench["references"]) == set(REFERENCES)
    for name, measured in (*bench["profiles"].items(), *bench["references"].items()):
        _check_server(name, measured, rounds=2)
    stateful = bench["profiles"]["stateful"]
    assert stateful["ratio"] == stateful["cpu_ratio"] == 1.0
    assert bench["references"]["fastapi"]["ratio_to_floor"] == 1.0
    assert bench["columns"]["sql"] == {"profile": "stateless", "place": COLUMNS["sql"][1]}
    assert bench["scale_out"] == []
    assert "| ref: fastapi |" in result.output and "| jwt-pure |" in result.output


@pytest.mark.slow
def test_a_short_cart_bench_draws_the_scale_out_curve(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--columns", "stateless", "--json", str(out), "--seconds", "1"]
    argv += ["--rounds", "1", "--connections", "4", "--max-replicas", "2"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    bench = json.loads(out.read_text())
    assert (
        set(bench["profiles"]) == {"stateless"} and bench["profiles"]["stateless"]["ratio"] is None
    )
    _check_server("stateless", bench["profiles"]["stateless"], rounds=1)
    curve = bench["scale_out"]
    assert [point["replicas"] for point in curve] == [1, 2]
    assert curve[1]["connections"] == 2 * curve[0]["connections"]  # the same queue per replica
    assert all(p["rps"] > 0 and p["cpu_us_per_request"] > 0 and p["errors"] == 0 for p in curve)
    assert curve[0]["efficiency"] == 1.0 and curve[1]["efficiency"] is not None
    assert "CPU" in bench["scale_out_note"] and "pinning:" in result.output


@pytest.mark.slow
def test_a_short_chat_bench_reports_the_chat_measure_and_gives_the_cores_back(
    tmp_path: Path,
) -> None:
    before = os.sched_getaffinity(0)
    out = tmp_path / "chat.json"
    argv = ["bench", "--workload", "chat", "--seconds", "1", "--rate", "300", "--json", str(out),
            "--markdown"]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert os.sched_getaffinity(0) == before  # the generator ran pinned in this process
    bench = json.loads(out.read_text())
    chat = bench["chat"]
    assert chat["database"] == "sqlite" and chat["rooms"] == 1
    assert chat["offered_per_second"] == 300
    assert chat["msgs_per_second"] > 0 and chat["gaps"] == 0
    assert chat["ack_p99_ms"] > 0 and chat["delivery_p99_ms"] > 0
    assert bench["profiles"] == {} and bench["scale_out"] == []
    assert "| msgs_per_second |" in result.output
