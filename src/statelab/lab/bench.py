"""``statelab bench``: the cart workload against each profile, side by side.

Each column (a profile, or a profile with placements changed: ``COLUMNS``) gets one
replica process (same machine, same settings otherwise) over one Redis and its own
SQLite file. The load comes from ``wrk`` (C, event-driven: it
uses a fraction of the CPU the Python replica does, so the replica is what
saturates) with a Lua script: every connection is one logged-in user who reads
the cart four times for each item added — the workload of a shop page.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from statelab.cluster.cgroups import CpuQuota
from statelab.cluster.servers import MissingBinary, PortedProcess, RedisServer
from statelab.db.migrate import upgrade

#: What is measured: a column's name -> its profile and ``--place`` overrides.
COLUMNS: dict[str, tuple[str, dict[str, str]]] = {
    "stateful": ("stateful", {}),
    "stateless": ("stateless", {}),
    "token": ("token", {}),
    "sql": ("stateless", {"session": "db", "cart": "db"}),  # sessions and carts in SQL
    "jwt-pure": ("token", {"session": "jwt-pure"}),  # no deny-list lookup per request
}
PROFILES = tuple(COLUMNS)
WORKLOAD = "cart: 4 x GET /api/cart per POST /api/cart/items, one logged-in user per connection"

# wrk's Lua: each connection takes one user's credentials; 1 in 5 requests adds an item.
CART_LUA = r"""
local users = {}
local counter = 0
for line in io.lines("%(users)s") do users[#users + 1] = line end
function setup(thread) counter = counter + 1; thread:set("tid", counter) end
function init(args) n = 0; me = users[(tid - 1) %% #users + 1] end
function request()
  n = n + 1
  local cookie, header = me:match("^(.-)\t(.*)$")
  local headers = {["Content-Type"] = "application/json"}
  if cookie ~= "" then headers["Cookie"] = cookie end
  local name, value = header:match("^(.-): (.*)$")
  headers[name] = value
  if n %% 5 == 0 then
    return wrk.format("POST", "/api/cart/items", headers, '{"item_id": 1, "quantity": 1}')
  end
  return wrk.format("GET", "/api/cart", headers)
end
"""


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _unit_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(output: str) -> Result:
    """Requests/s, p50 and p99 from ``wrk --latency`` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    pct = {
        p: _unit_ms(v, u)
        for p, v, u in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    }
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket:
        errors += sum(int(n) for n in socket.groups())
    return Result(rps, pct.get("50", 0.0), pct.get("99", 0.0), errors)


def _replica(run_dir: Path, column: str, env: dict[str, str]) -> PortedProcess:
    """One replica of ``column`` (``COLUMNS``) on a port of its own."""
    profile, place = COLUMNS[column]

    def argv(port: int) -> list[str]:
        return [
            sys.executable, "-m", "statelab", "serve", "--profile", profile,
            "--port", str(port), "--replica-id", f"{column}-r1",
            *(arg for kind, p in place.items() for arg in ("--place", f"{kind}={p}")),
        ]  # fmt: skip

    def ready(port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    return PortedProcess(f"bench-{column}", run_dir, argv, env=env, ready=ready)


def login_users(url: str, count: int, users_file: Path) -> None:
    """Register and log in ``count`` users; write one credential line per user."""
    lines = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(count):
            creds = {"username": f"bench{i:03d}", "password": "bench-password-1"}
            client.post("/api/auth/register", json=creds)
            client.cookies.clear()
            r = client.post("/api/auth/login", json=creds)
            r.raise_for_status()
            body = r.json()
            if "access_token" in body:
                lines.append(f"\tAuthorization: Bearer {body['access_token']}")
            else:
                cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
                lines.append(f"{cookie}\tX-CSRF-Token: {body['csrf_token']}")
    users_file.write_text("\n".join(lines) + "\n")


def _wrk(url: str, script: Path, connections: int, seconds: int) -> Result:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise MissingBinary("wrk not found: install it with `apt-get install wrk`")
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return parse_wrk(out.stdout)


@contextmanager
def _stack(run_dir: Path) -> Iterator[RedisServer]:
    with RedisServer(run_dir / "redis") as redis:
        yield redis


def scale_out_curve(
    run_root: Path, replicas: range, seconds: int, connections: int, share: float = 0.4
) -> tuple[list[dict[str, float]], str]:
    """Requests/s through HAProxy for each replica count, each replica CPU-limited."""
    from statelab.lab.deployment import LocalDeployment

    quota = CpuQuota(share)
    curve = []
    for n in replicas:
        with LocalDeployment(run_root / f"scale-{n}", "stateless", replicas=n) as deployment:
            status = deployment.control.status()
            try:
                for replica in status["replicas"]:
                    quota.limit(replica["id"], int(replica["pid"]))
                users_file = run_root / f"scale-{n}.users"
                login_users(deployment.shop_url, connections, users_file)
                script = run_root / f"scale-{n}.lua"
                script.write_text(CART_LUA % {"users": users_file})
                _wrk(deployment.shop_url, script, connections, 2)
                measured = _wrk(deployment.shop_url, script, connections, seconds)
            finally:
                quota.release()
        curve.append({"replicas": n, "rps": measured.rps, "p50_ms": measured.p50_ms})
    return curve, quota.note


def run(
    seconds: int = 10,
    connections: int = 32,
    users: int = 32,
    profiles: tuple[str, ...] = PROFILES,
    max_replicas: int = 4,
    rounds: int = 3,
) -> dict[str, Any]:
    """Saturate one replica of each profile in turn; ratios are to ``stateful``.

    All replicas run for the whole benchmark (an idle one costs nothing) and the
    profiles take turns, ``rounds`` times in a rotating order: a machine whose speed
    drifts (a shared virtual machine does) then moves every profile alike, and the
    median of the rounds is reported."""
    results: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="statelab-bench-") as tmp,
        _stack(Path(tmp)) as redis,
        contextlib.ExitStack() as replicas,
    ):
        run_dir = Path(tmp)
        targets: dict[str, tuple[str, Path]] = {}
        for profile in profiles:
            database = f"sqlite:///{run_dir / f'{profile}.db'}"
            upgrade(database)
            env = {
                **os.environ,
                "STATELAB_REDIS_URL": redis.url,
                "STATELAB_DATABASE_URL": database,
                "STATELAB_SECRET_KEY": secrets.token_hex(32),
                "STATELAB_DATA_DIR": str(run_dir / profile),
                "STATELAB_MAX_LINE_QUANTITY": "1000000",
                "STATELAB_LOGIN_LIMIT_PER_ADDRESS": "100000",
                "STATELAB_REGISTER_LIMIT_PER_ADDRESS": "100000",
            }
            replica = replicas.enter_context(_replica(run_dir, profile, env))
            url = f"http://{replica.address}"
            users_file = run_dir / f"{profile}.users"
            login_users(url, users, users_file)
            script = run_dir / f"{profile}.lua"
            script.write_text(CART_LUA % {"users": users_file})
            _wrk(url, script, connections, 2)  # warm up
            targets[profile] = (url, script)
        measured: dict[str, list[Result]] = {profile: [] for profile in profiles}
        for i in range(rounds):
            for profile in profiles[i % len(profiles) :] + profiles[: i % len(profiles)]:
                url, script = targets[profile]
                measured[profile].append(_wrk(url, script, connections, seconds))
        for profile, runs in measured.items():
            results[profile] = {
                "rps": statistics.median(r.rps for r in runs),
                "p50_ms": statistics.median(r.p50_ms for r in runs),
                "p99_ms": statistics.median(r.p99_ms for r in runs),
                "errors": sum(r.errors for r in runs),
                "rounds_rps": [round(r.rps, 1) for r in runs],
            }
        replicas.close()
        curve, note = (
            scale_out_curve(run_dir, range(1, max_replicas + 1), seconds, connections)
            if max_replicas
            else ([], "not measured")
        )
    base = results.get("stateful", {}).get("rps") or None
    for values in results.values():
        values["ratio"] = round(values["rps"] / base, 3) if base else 0.0
    return {
        "version": 1,
        "workload": WORKLOAD,
        "load_generator": (
            f"wrk -t1 -c{connections} -d{seconds}s --latency (Lua script), "
            f"{rounds} rounds per profile taken in turns, median"
        ),
        "profiles": results,
        "columns": {
            name: {"profile": COLUMNS[name][0], "place": COLUMNS[name][1]} for name in profiles
        },
        "scale_out": curve,
        "scale_out_note": f"stateless profile through HAProxy; {note}",
    }
