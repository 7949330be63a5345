"""``statelab bench``: wrk's output is read right, and a short run has the promised
shape with no failed request (a correctness check; the numbers are not judged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from statelab.cli import app
from statelab.lab.bench import PROFILES, parse_wrk

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


def test_parse_wrk_reads_rate_percentiles_and_every_kind_of_error() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result.rps == pytest.approx(2616.12)
    assert result.p50_ms == pytest.approx(11.7)
    assert result.p99_ms == pytest.approx(1270.0)
    assert result.errors == 4 + 2 + 1


@pytest.mark.slow
def test_a_short_bench_covers_every_profile_and_the_scale_out_curve(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--json", str(out), "--seconds", "1", "--rounds", "2"]
    argv += ["--connections", "4", "--max-replicas", "2"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    bench = json.loads(out.read_text())
    assert bench["version"] == 1 and bench["workload"] and "wrk" in bench["load_generator"]
    assert set(bench["profiles"]) == set(PROFILES)
    for profile, measured in bench["profiles"].items():
        assert measured["errors"] == 0, profile
        assert measured["rps"] > 0 and 0 < measured["p50_ms"] <= measured["p99_ms"], profile
        assert len(measured["rounds_rps"]) == 2
    assert bench["profiles"]["stateful"]["ratio"] == 1.0
    assert [point["replicas"] for point in bench["scale_out"]] == [1, 2]
    assert all(point["rps"] > 0 for point in bench["scale_out"])
    assert "ratio to stateful" in result.output
