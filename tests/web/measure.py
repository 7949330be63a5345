"""Replica CPU per request on the request path, each server pinned to one core.

Not a test: it prints numbers for the docs, it asserts nothing. Each server (one
replica per column, and the two reference servers of ``statelab.lab.references``)
has every thread pinned to core 0; Redis and ``wrk`` run on core 1. A server's CPU
time (user + system, every thread, from ``/proc/PID/stat``) is read before and after
each ``wrk`` run and divided by the requests wrk counted::

    .venv/bin/python -m tests.web.measure [--columns stateful,stateless,token]
        [--workload read|cart] [--seconds 5] [--rounds 3] [--connections 32]
        [--before OLD/src] [--profile-dir DIR]

``read`` is ``GET /api/cart`` of logged-in users with 2 items each; ``cart`` reads
the cart four times per item added. Columns take turns, ``rounds`` times; the
median and the range are printed. A column ``NAME+granian`` is served by granian
(not a dependency of the shop: ``.venv/bin/pip install granian`` first);
with ``--before``, every column runs once more (``NAME~``) from that source tree
(e.g. a ``git worktree`` of an older commit). With ``--profile-dir``, py-spy
records one more run of each column (speedscope JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from statelab.cluster.servers import PortedProcess, RedisServer
from statelab.db.migrate import upgrade

SERVER_CORE, LOAD_CORE = 0, 1
TICK = os.sysconf("SC_CLK_TCK")

COLUMNS: dict[str, tuple[str, list[str]]] = {
    "stateful": ("stateful", []),
    "stateless": ("stateless", []),
    "token": ("token", []),
    "sql": ("stateless", ["session=db", "cart=db"]),
    "jwt-pure": ("token", ["session=jwt-pure"]),
}
REFERENCES = ("starlette", "fastapi")

LUA = r"""
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
  if %(writes)s and n %% 5 == 0 then
    return wrk.format("POST", "/api/cart/items", headers, '{"item_id": 1, "quantity": 1}')
  end
  return wrk.format("GET", "/api/cart", headers)
end
"""


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (granian serves from a worker process)."""
    found = [pid]
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            for child in children:
                found += family(int(child))
    return found


def pin(pid: int, core: int) -> None:
    """Every thread of ``pid`` and its descendants onto ``core``."""
    for member in family(pid):
        for tid in os.listdir(f"/proc/{member}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(tid), {core})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process and its descendants (every thread)."""
    total = 0
    for member in family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def granian_app() -> Any:
    """The app of a replica configured from the environment, for granian's
    ``--factory``; the heap settles once its lifespan has started, as under uvicorn."""
    from statelab.config import build_settings
    from statelab.web.app import create_app
    from statelab.web.server import settle_heap

    app = create_app(build_settings())

    async def settled(scope: Any, receive: Any, send: Any) -> None:
        async def sent(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete":
                settle_heap()
            await send(message)

        await app(scope, receive, sent if scope["type"] == "lifespan" else send)

    return settled


@dataclass
class Run:
    rps: float
    requests: int
    cpu_us: float  # per request
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, script: Path, seconds: int, connections: int, pid: int) -> Run:
    argv = ["taskset", "-c", str(LOAD_CORE), shutil.which("wrk") or "wrk", "-t1"]
    argv += [f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    pin(pid, SERVER_CORE)
    before = cpu_seconds(pid)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(pid) - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {p: _ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    return Run(rps, requests, used / requests * 1e6, pct["50"], pct["99"], errors)


def _ready(path: str) -> Callable[[int], bool]:
    def ready(port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=0.5).status_code < 500
        except httpx.TransportError:
            return False

    return ready


def replica(run_dir: Path, column: str, env: dict[str, str]) -> PortedProcess:
    """``column``: a name of ``COLUMNS``, then ``+granian`` to serve it with granian,
    then ``~`` to run it from the ``--before`` source tree."""
    name, _, server = column.rstrip("~").partition("+")
    profile, place = COLUMNS[name]
    places = [a for p in place for a in ("--place", p)]
    if server == "granian":  # the CLI's options, as the environment says them
        env = {**env, "STATELAB_PROFILE": profile, "STATELAB_REPLICA_ID": name}
        env["STATELAB_PLACE"] = " ".join(place)

    def argv(port: int) -> list[str]:
        if server == "granian":
            return [str(Path(sys.executable).parent / "granian"), "--interface", "asgi",
                    "--factory", "tests.web.measure:granian_app", "--host", "127.0.0.1",
                    "--port", str(port), "--workers", "1", "--runtime-mode", "st",
                    "--loop", "uvloop", "--no-ws", "--log-level", "warning"]  # fmt: skip
        return [sys.executable, "-m", "statelab", "serve", "--profile", profile, "--port",
                str(port), "--replica-id", name, *places]  # fmt: skip

    return PortedProcess(column, run_dir, argv, env=env, ready=_ready("/readyz"))


def reference(run_dir: Path, name: str) -> PortedProcess:
    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "statelab.lab.references", name, "--port", str(port)]

    return PortedProcess(name, run_dir, argv, ready=_ready("/api/cart"))


def shoppers(url: str, count: int, users_file: Path, items: int) -> None:
    """``count`` logged-in users with ``items`` cart lines each; one credential line
    per user (cookie, tab, header) for wrk."""
    lines = []
    for i in range(count):
        with httpx.Client(base_url=url, timeout=30) as client:
            creds = {"username": f"measure{i:03d}", "password": "measure-password-1"}
            client.post("/api/auth/register", json=creds)
            body = client.post("/api/auth/login", json=creds).raise_for_status().json()
            if "access_token" in body:
                name, value = "Authorization", f"Bearer {body['access_token']}"
            else:
                name, value = "X-CSRF-Token", body["csrf_token"]
            for item in (1, 10)[:items]:
                client.post("/api/cart/items", json={"item_id": item}, headers={name: value})
            # After the adds: a cart the client carries (cart=client) is a cookie too.
            cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
            lines.append(f"{cookie}\t{name}: {value}")
    users_file.write_text("\n".join(lines) + "\n")


def profile(pid: int, out: Path, url: str, script: Path, seconds: int, conns: int) -> None:
    spy = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-o", str(out)]
    spy += ["--format", "speedscope", "-r", "250", "-d", str(seconds)]
    recording = subprocess.Popen(
        ["taskset", "-c", str(LOAD_CORE), *spy],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wrk(url, script, seconds, conns, pid)
    recording.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.web.measure")
    parser.add_argument("--columns", default="stateful,stateless,token")
    parser.add_argument("--refs", default=",".join(REFERENCES))
    parser.add_argument("--workload", choices=("read", "cart"), default="read")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--before", type=Path, help="a source tree (src/) to compare with")
    parser.add_argument("--profile-dir", type=Path)
    args = parser.parse_args()
    columns = [c for c in args.columns.split(",") if c]
    if args.before:
        columns = [c for column in columns for c in (f"{column}~", column)]
    refs = [r for r in args.refs.split(",") if r]
    with tempfile.TemporaryDirectory(prefix="statelab-measure-") as tmp:
        for line in measure(Path(tmp), columns, refs, args):
            print(line, flush=True)


def measure(
    run_dir: Path, columns: list[str], refs: list[str], args: argparse.Namespace
) -> Iterator[str]:
    with (
        RedisServer(run_dir / "redis", persistence="off") as redis,
        contextlib.ExitStack() as stack,
    ):
        assert redis.pid is not None
        pin(redis.pid, LOAD_CORE)
        targets: dict[str, tuple[str, Path, int]] = {}
        writes = "true" if args.workload == "cart" else "false"
        for column in columns:
            database = f"sqlite:///{run_dir / f'{column}.db'}"  # migrated by this tree
            upgrade(database)
            env = {
                **os.environ,
                "STATELAB_REDIS_URL": redis.url,
                "STATELAB_DATABASE_URL": database,
                "STATELAB_SECRET_KEY": secrets.token_hex(32),
                "STATELAB_DATA_DIR": str(run_dir / column),
                "STATELAB_MAX_LINE_QUANTITY": "1000000",
                "STATELAB_LOGIN_LIMIT_PER_ADDRESS": "100000",
                "STATELAB_REGISTER_LIMIT_PER_ADDRESS": "100000",
            }
            if column.endswith("~"):
                env["PYTHONPATH"] = str(args.before)
            proc = stack.enter_context(replica(run_dir, column, env))
            url = f"http://{proc.address}"
            users = run_dir / f"{column}.users"
            shoppers(url, args.users, users, 2)
            script = run_dir / f"{column}.lua"
            script.write_text(LUA % {"users": users, "writes": writes})
            assert proc.pid is not None
            targets[column] = (url, script, proc.pid)
        for name in refs:
            proc = stack.enter_context(reference(run_dir, name))
            users = run_dir / f"{name}.users"
            users.write_text("\tX-CSRF-Token: x\n")
            script = run_dir / f"{name}.lua"
            script.write_text(LUA % {"users": users, "writes": writes})
            assert proc.pid is not None
            targets[name] = (f"http://{proc.address}", script, proc.pid)
        for url, script, pid in targets.values():
            wrk(url, script, 2, args.connections, pid)  # warm up
        runs: dict[str, list[Run]] = {name: [] for name in targets}
        names = list(targets)
        for i in range(args.rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                url, script, pid = targets[name]
                runs[name].append(wrk(url, script, args.seconds, args.connections, pid))
        floor = statistics.median(r.cpu_us for r in runs["fastapi"]) if "fastapi" in runs else 0
        yield (
            f"{'server':<12} {'µs/req':>8} {'range':>13} {'rps':>7} {'p50':>6} {'p99':>6} "
            f"{'err':>4} {'floor':>6}"
        )
        for name, done in runs.items():
            cpu = statistics.median(r.cpu_us for r in done)
            lo, hi = min(r.cpu_us for r in done), max(r.cpu_us for r in done)
            rps = statistics.median(r.rps for r in done)
            p50 = statistics.median(r.p50_ms for r in done)
            p99 = statistics.median(r.p99_ms for r in done)
            err = sum(r.errors for r in done)
            ratio = f"{floor / cpu:.2f}" if floor else "-"
            yield (
                f"{name:<12} {cpu:8.0f} {lo:6.0f}-{hi:<6.0f} {rps:7.0f} {p50:6.2f} {p99:6.2f} "
                f"{err:4d} {ratio:>6}"
            )
        if args.profile_dir:
            args.profile_dir.mkdir(parents=True, exist_ok=True)
            for name in columns:
                url, script, pid = targets[name]
                out = args.profile_dir / f"{name}.json"
                profile(pid, out, url, script, args.seconds, args.connections)
                yield f"profile of {name}: {out}"


if __name__ == "__main__":
    main()
