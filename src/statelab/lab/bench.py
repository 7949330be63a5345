"""``statelab bench``: what each placement of state costs one replica, in CPU time per
request and in requests per second, beside what the server and the framework cost
alone, all measured in one run.

Requests per second of unpinned processes on a small shared machine move with
wherever the load generator and Redis happen to be scheduled. So every server under
test runs pinned to one core (``Pinning``: the first CPU this process may use) and
``wrk``, Redis and PostgreSQL to the others; and each server's CPU time (user +
system, all its threads, from ``/proc/PID/stat``) before and after each measured
run, divided by the requests wrk completed, is its *CPU per request*, the number the
ratios are best read from. With fewer than two CPUs nothing is pinned, and the
output says so.

Two reference servers (``statelab.lab.references``) answer the same requests in the
same run: a bare Starlette endpoint (what uvicorn and HTTP cost) and the *FastAPI
floor* (one route, one async dependency, a response model: what the framework costs
for a trivial route). ``ratio_to_floor`` is the floor's CPU per request divided by a
server's, so 1.0 would be a shop that costs nothing over the framework.

Columns (``COLUMNS``) are profiles with some placements changed; each is one replica
with a database of its own, all over one Redis. The servers take turns, ``rounds``
times in a rotating order; the median and the spread (min-max) of the rounds are
reported, so a machine whose speed drifts moves every server alike.

Workloads: ``cart`` (four cart reads per item added, one logged-in user per
connection), ``read`` (``GET /api/cart`` of users with two lines in their cart) and
``chat`` (``statelab.lab.chatload.measure``: messages per second through two
replicas). The scale-out curve runs the stateless profile behind HAProxy, adding
replicas one at a time, each held by a CPU quota to an equal share of 80 % of the
server core(s), so the last replica has as much room as the first.
"""

from __future__ import annotations

import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from statelab.cluster.cgroups import CpuQuota, pin
from statelab.cluster.client import read_state
from statelab.cluster.members import proc_usage
from statelab.cluster.servers import PortedProcess, PostgresServer, RedisServer
from statelab.db.migrate import upgrade
from statelab.lab import load
from statelab.lab.deployment import LAB_ENV, LocalDeployment

#: What is measured: a column's name -> its profile and ``--place`` overrides.
COLUMNS: dict[str, tuple[str, dict[str, str]]] = {
    "stateful": ("stateful", {}),
    "stateless": ("stateless", {}),
    "token": ("token", {}),
    "sql": ("stateless", {"session": "db", "cart": "db"}),  # sessions and carts in SQL
    "jwt-pure": ("token", {"session": "jwt-pure"}),  # no deny-list lookup per request
}
PROFILES = tuple(COLUMNS)
#: The reference servers, cheapest first; ratios to the framework are to ``FLOOR``.
REFERENCES = ("starlette", "fastapi")
FLOOR = "fastapi"
BASE = "stateful"

Workload = Literal["cart", "read", "chat"]
WORKLOADS: dict[str, str] = {
    "cart": load.WORKLOAD,
    "read": load.READ_WORKLOAD,
    "chat": "chat: messages sent and delivered through two replicas (statelab.lab.chatload)",
}
Database = Literal["sqlite", "postgres"]
VERSION = 2
WARM_UP_SECONDS = 1
#: How long a replica added to the scale-out deployment may take to be in rotation.
SETTLE_SECONDS = 60.0
#: The share of the server core(s) the scale-out replicas get between them: the rest
#: is left to the kernel (loopback traffic is processed on both ends' cores) and to
#: whatever else the machine runs, so the last replica added is not the one starved.
SCALE_OUT_SHARE = 0.8
#: Connections per scale-out replica (fewer if ``--connections`` says so): enough to
#: keep a fifth of a core busy; a deeper queue at a CPU-limited replica only waits,
#: and delays its health checks until the load balancer takes it out of rotation.
SCALE_OUT_CONNECTIONS = 8


class BenchError(RuntimeError):
    """The bench cannot run as asked here (a workload whose measurement is missing)."""


# -- where things run ----------------------------------------------------------------


@dataclass(frozen=True)
class Pinning:
    """The CPUs the servers under test run on, and those the load generator and the
    stores run on; both empty when there were too few CPUs to separate them."""

    servers: tuple[int, ...]
    load: tuple[int, ...]
    available: int

    @property
    def pinned(self) -> bool:
        return bool(self.servers)

    def describe(self) -> str:
        if not self.pinned:
            return (
                f"not pinned: {self.available} CPU available, so the servers share it "
                "with wrk and the stores"
            )
        return (
            f"each server under test on CPU {_cpus(self.servers)}; wrk, Redis and "
            f"PostgreSQL on CPU {_cpus(self.load)} (sched_setaffinity on every thread)"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "pinned": self.pinned,
            "servers": list(self.servers),
            "load": list(self.load),
            "available_cpus": self.available,
            "how": "sched_setaffinity on every thread" if self.pinned else None,
            "note": self.describe(),
        }


def _cpus(cpus: Collection[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def plan_pinning(cpus: Collection[int] | None = None) -> Pinning:
    """Servers on the first CPU we may use, everything else on the rest; unpinned
    below two CPUs."""
    available = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if len(available) < 2:
        return Pinning((), (), len(available))
    return Pinning((available[0],), tuple(available[1:]), len(available))


def _pin(pid: int | None, cpus: tuple[int, ...], *, children: bool = False) -> None:
    if cpus and pid is not None:
        pin(pid, cpus, children=children)


# -- one measured run ----------------------------------------------------------------


@dataclass
class Round:
    """One wrk run against one server, and the CPU the server spent on it."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_us_per_request: float
    non_2xx: int = 0


def cpu_seconds(pids: Collection[int]) -> float:
    """User + system CPU seconds that processes ``pids`` (all their threads) used."""
    total = 0.0
    for pid in pids:
        used = proc_usage(pid)["cpu_seconds"]
        if used is None:
            raise ProcessLookupError(f"process {pid} is gone: the server under test died")
        total += used
    return total


def measure(
    url: str,
    users: Path,
    pids: Collection[int],
    workload: load.Workload,
    connections: int,
    seconds: float,
    cpus: tuple[int, ...] = (),
) -> Round:
    """One wrk run (on ``cpus``) and the CPU time the servers ``pids`` spent meanwhile,
    per request wrk completed."""
    before = cpu_seconds(pids)
    result = load.wrk(url, users, connections, seconds, workload=workload, cpus=cpus or None)
    spent = cpu_seconds(pids) - before
    per_request = spent / result.requests * 1e6 if result.requests else 0.0
    return Round(
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors,
        requests=result.requests,
        cpu_us_per_request=round(per_request, 1),
        non_2xx=result.non_2xx,
    )


def summarize(rounds: list[Round]) -> dict[str, Any]:
    """Medians of the rounds, every round's rate and CPU (the spread), all errors."""
    return {
        "rps": round(statistics.median(r.rps for r in rounds), 1),
        "cpu_us_per_request": round(statistics.median(r.cpu_us_per_request for r in rounds), 1),
        "p50_ms": round(statistics.median(r.p50_ms for r in rounds), 3),
        "p99_ms": round(statistics.median(r.p99_ms for r in rounds), 3),
        "errors": sum(r.errors for r in rounds),
        "non_2xx": sum(r.non_2xx for r in rounds),  # the rest of the errors: sockets
        "requests": sum(r.requests for r in rounds),
        "rounds_rps": [round(r.rps, 1) for r in rounds],
        "rounds_cpu_us": [r.cpu_us_per_request for r in rounds],
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


def add_ratios(profiles: dict[str, dict[str, Any]], references: dict[str, dict[str, Any]]) -> None:
    """``ratio`` (requests/s over stateful's) and ``cpu_ratio`` (stateful's CPU per
    request over this one's) for the columns; ``ratio_to_floor`` (the FastAPI floor's
    CPU per request over this one's) for every server. Higher is better in all three."""
    base = profiles.get(BASE, {})
    floor = references.get(FLOOR, {}).get("cpu_us_per_request")
    for measured in profiles.values():
        measured["ratio"] = _ratio(measured["rps"], base.get("rps"))
        measured["cpu_ratio"] = _ratio(
            base.get("cpu_us_per_request"), measured["cpu_us_per_request"]
        )
    for measured in (*profiles.values(), *references.values()):
        measured["ratio_to_floor"] = _ratio(floor, measured["cpu_us_per_request"])


# -- the servers ---------------------------------------------------------------------


@dataclass
class Target:
    """A server under test, ready to take load."""

    name: str
    url: str
    pid: int
    users: Path
    rounds: list[Round] = field(default_factory=list)


def _answers(path: str) -> Callable[[int], bool]:
    def ready(port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    return ready


def _replica(run_dir: Path, column: str, env: dict[str, str]) -> PortedProcess:
    """One replica of ``column`` (``COLUMNS``) on a port of its own."""
    profile, place = COLUMNS[column]

    def argv(port: int) -> list[str]:
        return [
            sys.executable, "-m", "statelab", "serve", "--profile", profile,
            "--port", str(port), "--replica-id", f"{column}-r1",
            *(arg for kind, p in place.items() for arg in ("--place", f"{kind}={p}")),
        ]  # fmt: skip

    return PortedProcess(f"bench-{column}", run_dir, argv, env=env, ready=_answers("/readyz"))


def _reference(run_dir: Path, name: str) -> PortedProcess:
    """A reference server (``statelab.lab.references``) on a port of its own."""

    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "statelab.lab.references", name, "--port", str(port)]

    return PortedProcess(f"bench-{name}", run_dir, argv, ready=_answers("/api/cart"))


@contextmanager
def _stores(
    run_dir: Path, database: Database, pinning: Pinning
) -> Iterator[tuple[RedisServer, PostgresServer | None]]:
    """One Redis (and PostgreSQL) for every column, on the load generator's CPUs."""
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(run_dir / "redis"))
        _pin(redis.pid, pinning.load)
        postgres = None
        if database == "postgres":
            postgres = stack.enter_context(PostgresServer(run_dir / "pg"))
            # Its background processes now; each backend inherits the mask when forked.
            _pin(postgres.pid, pinning.load, children=True)
        yield redis, postgres


def _environment(
    run_dir: Path, column: str, redis: RedisServer, postgres: PostgresServer | None
) -> dict[str, str]:
    """A column's settings: the lab's (cheap password hashing, no limit the load
    would hit), the shared Redis and a database of its own, migrated."""
    if postgres is None:
        database = f"sqlite:///{run_dir / f'{column}.db'}"
    else:
        database = postgres.create_database(f"bench_{column.replace('-', '_')}")
    upgrade(database)
    return {
        **os.environ,
        **LAB_ENV,
        "STATELAB_REDIS_URL": redis.url,
        "STATELAB_DATABASE_URL": database,
        "STATELAB_SECRET_KEY": os.urandom(32).hex(),
        "STATELAB_DATA_DIR": str(run_dir / column),
        "STATELAB_DRAIN_SECONDS": "0",  # no load balancer to notice a drain
    }


@dataclass
class Setup:
    """How every server is driven: the workload and the load."""

    run_dir: Path
    workload: load.Workload
    connections: int
    users: int
    pinning: Pinning


def _start_all(stack: ExitStack, processes: dict[str, PortedProcess]) -> None:
    """Start every server at once (their imports overlap), then wait for each; all are
    stopped when ``stack`` closes."""
    for process in processes.values():
        stack.callback(process.stop)
        process.start()
    for process in processes.values():
        process.wait_ready(timeout=60)


def _ready(process: PortedProcess, name: str, setup: Setup) -> Target:
    """Pin a started server, log its users in and warm it up."""
    assert process.pid is not None  # started
    _pin(process.pid, setup.pinning.servers)
    url = f"http://{process.address}"
    users = setup.run_dir / f"{name}.users"
    _log_in(url, users, setup)
    load.wrk(url, users, setup.connections, WARM_UP_SECONDS, workload=setup.workload,
             cpus=setup.pinning.load or None)  # fmt: skip
    return Target(name, url, process.pid, users)


def _log_in(url: str, users: Path, setup: Setup) -> None:
    """Log the users in; for the read workload, with the cart it reads, checked."""
    cart = load.READ_CART if setup.workload == "read" else None
    load.login_users(url, setup.users, users, prefix="bench", cart=cart)
    if cart is not None and (found := load.cart_of_first(url, users)) != cart:
        raise BenchError(f"{url}: the read workload's user has cart {found}, not {cart}")


def take_turns(targets: list[Target], rounds: int, run: Callable[[Target], Round]) -> None:
    """``rounds`` rounds; each round every target once, starting one further along."""
    for i in range(rounds):
        start = i % len(targets)
        for target in targets[start:] + targets[:start]:
            target.rounds.append(run(target))


# -- the scale-out curve -------------------------------------------------------------


def _cluster_pids(deployment: LocalDeployment, status: dict[str, Any]) -> list[int]:
    """The deployment's processes other than its replicas: supervisor, HAProxy, Redis
    and workers (they belong with the load generator, off the replicas' core)."""
    state = read_state(deployment.run_dir) or {}
    pids = [state.get("supervisor", {}).get("pid"), (status.get("haproxy") or {}).get("pid")]
    pids += [p.get("pid") for p in (status.get("redis") or {}).get("processes", [])]
    pids += [w.get("pid") for w in status.get("workers", [])]
    return [int(p) for p in pids if p]


def _replicas_up(deployment: LocalDeployment, count: int) -> tuple[dict[str, int], dict[str, Any]]:
    """The ids and PIDs of ``count`` replicas in rotation (waits for them)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        status = deployment.control.status()
        up = {r["id"]: int(r["pid"]) for r in status["replicas"]
              if r["state"] == "up" and r.get("pid")}  # fmt: skip
        if len(up) >= count:
            return up, status
        if time.monotonic() > deadline:
            raise BenchError(f"only {len(up)} of {count} replicas in rotation after "
                             f"{SETTLE_SECONDS:.0f} s")  # fmt: skip
        time.sleep(0.2)


def _efficiency(curve: list[dict[str, Any]]) -> None:
    """Per point: ``efficiency`` (requests/s over n times one replica's) and
    ``marginal`` (what the replica added, over one replica's)."""
    one = curve[0]["rps"] if curve else 0.0
    for i, point in enumerate(curve):
        previous = curve[i - 1]["rps"] if i else 0.0
        point["efficiency"] = _ratio(point["rps"], one * point["replicas"])
        point["marginal"] = _ratio(point["rps"] - previous, one)


def scale_out_curve(
    run_root: Path, max_replicas: int, seconds: float, setup: Setup
) -> tuple[list[dict[str, Any]], str]:
    """Stateless replicas behind HAProxy, added one at a time up to ``max_replicas``,
    each CPU-limited to an equal share of the server core(s) (``SCALE_OUT_SHARE``);
    requests/s, latency and the replicas' CPU per request at each count."""
    server_cpus = len(setup.pinning.servers) or setup.pinning.available
    quota = CpuQuota(round(SCALE_OUT_SHARE * server_cpus / max_replicas, 3))
    curve: list[dict[str, Any]] = []
    with LocalDeployment(run_root / "scale", "stateless", replicas=1) as deployment:
        try:
            users = run_root / "scale.users"
            _log_in(deployment.shop_url, users, setup)
            for count in range(1, max_replicas + 1):
                if count > 1:
                    deployment.control.add()
                pids = _place_cluster(deployment, count, quota, setup.pinning)
                url, cpus = deployment.shop_url, setup.pinning.load
                connections = min(setup.connections, SCALE_OUT_CONNECTIONS) * count
                load.wrk(url, users, connections, WARM_UP_SECONDS,
                         workload=setup.workload, cpus=cpus or None)  # fmt: skip
                _replicas_up(deployment, count)  # all back in rotation after the warm-up
                measured = measure(url, users, pids, setup.workload, connections, seconds, cpus)
                curve.append({"replicas": count, "connections": connections,
                              **measured.__dict__})  # fmt: skip
        finally:
            quota.release()
    _efficiency(curve)
    where = (
        f"replicas on CPU {_cpus(setup.pinning.servers)}, HAProxy, Redis, the supervisor "
        f"and wrk on CPU {_cpus(setup.pinning.load)}"
        if setup.pinning.pinned
        else "not pinned"
    )
    per = min(setup.connections, SCALE_OUT_CONNECTIONS)
    return curve, (
        f"stateless profile through HAProxy, replicas added live, {per} connections per "
        f"replica; {quota.note}; {where}"
    )


def _place_cluster(
    deployment: LocalDeployment, count: int, quota: CpuQuota, pinning: Pinning
) -> list[int]:
    """Wait for ``count`` replicas; pin them and quota the new ones, and pin the rest
    of the cluster to the load generator's CPUs. Returns the replicas' PIDs."""
    replicas, status = _replicas_up(deployment, count)
    for pid in _cluster_pids(deployment, status):
        _pin(pid, pinning.load)
    for rid, pid in replicas.items():
        _pin(pid, pinning.servers)
        if rid not in quota.groups:
            quota.limit(rid, pid)
    return list(replicas.values())


# -- the chat workload ---------------------------------------------------------------


def _chatload() -> Any:
    try:
        # Imported by name: the chat measurement ships separately and may be absent.
        return importlib.import_module("statelab.lab.chatload")
    except ModuleNotFoundError as exc:
        if exc.name != "statelab.lab.chatload":
            raise
        raise BenchError(
            "the chat workload is not available in this version: "
            "statelab.lab.chatload (its measurement) is missing"
        ) from exc


@contextmanager
def _pinned_self(cpus: tuple[int, ...]) -> Iterator[None]:
    """This process (every thread) on ``cpus`` for a while, then back where it was."""
    was = tuple(os.sched_getaffinity(0))
    _pin(os.getpid(), cpus)
    try:
        yield
    finally:
        _pin(os.getpid(), was)


def chat(
    database: Database, seconds: float, rooms: int, rate: float, pinning: Pinning
) -> dict[str, Any]:
    """Messages per second, ack and delivery p99 and gaps through two replicas, from
    ``statelab.lab.chatload.measure``: it starts its own replicas and stores, and names
    their PIDs, so the replicas go on the server CPUs and the stores on the others;
    its message generator runs in this process, which goes there too (as wrk would)."""
    chatload = _chatload()

    def place(pids: dict[str, int]) -> None:
        for name, pid in pids.items():
            if name in ("redis", "postgres"):
                _pin(pid, pinning.load, children=True)
            else:
                _pin(pid, pinning.servers)

    with _pinned_self(pinning.load):
        measured: dict[str, Any] = chatload.measure(
            database=database, seconds=seconds, rooms=rooms, rate=rate, on_started=place
        )
    return {"database": database, "rooms": rooms, **measured}


# -- the whole run -------------------------------------------------------------------


def run(
    seconds: float = 5,
    connections: int = 32,
    users: int = 32,
    profiles: tuple[str, ...] = PROFILES,
    max_replicas: int = 4,
    rounds: int = 3,
    workload: Workload = "cart",
    database: Database = "sqlite",
    rooms: int = 1,
    rate: float = 600.0,
    pinning: Pinning | None = None,
) -> dict[str, Any]:
    """Every column and both references under ``workload``, pinned, in turns; then
    the scale-out curve. Returns the JSON document ``statelab bench --json`` writes."""
    unknown = sorted(set(profiles) - set(COLUMNS))
    if unknown or not profiles:
        raise BenchError(f"columns {unknown}: choose among {', '.join(COLUMNS)}")
    pinning = pinning or plan_pinning()
    result: dict[str, Any] = {
        "version": VERSION,
        "workload": workload,
        "description": WORKLOADS[workload],
        "database": database,
    }
    if workload == "chat":
        return result | _chat_result(database, seconds, rooms, rate, pinning)
    with tempfile.TemporaryDirectory(prefix="statelab-bench-") as tmp:
        setup = Setup(Path(tmp), workload, connections, users, pinning)
        measured = _servers(setup, profiles, rounds, seconds, database)
        curve, note = (
            scale_out_curve(setup.run_dir, max_replicas, seconds, setup)
            if max_replicas
            else ([], "not measured")
        )
    return result | {
        "load_generator": (
            f"wrk -t1 -c{connections} -d{seconds:g}s --latency (Lua script), {users} users; "
            f"{rounds} rounds taken in turns, median"
        ),
        "pinning": pinning.as_json(),
        "floor": FLOOR,
        **measured,
        "columns": {
            name: {"profile": COLUMNS[name][0], "place": COLUMNS[name][1]} for name in profiles
        },
        "scale_out": curve,
        "scale_out_note": note,
    }


def _servers(
    setup: Setup, profiles: tuple[str, ...], rounds: int, seconds: float, database: Database
) -> dict[str, dict[str, Any]]:
    """Start the columns and the references, measure them in turns; their summaries."""

    def one(target: Target) -> Round:
        return measure(target.url, target.users, [target.pid], setup.workload,
                       setup.connections, seconds, setup.pinning.load)  # fmt: skip

    with _stores(setup.run_dir, database, setup.pinning) as (redis, postgres), ExitStack() as stack:
        processes = {
            name: _replica(setup.run_dir, name, _environment(setup.run_dir, name, redis, postgres))
            for name in profiles
        } | {name: _reference(setup.run_dir, name) for name in REFERENCES}
        _start_all(stack, processes)
        targets = [_ready(process, name, setup) for name, process in processes.items()]
        take_turns(targets, rounds, one)
    columns = {t.name: summarize(t.rounds) for t in targets if t.name in COLUMNS}
    references = {t.name: summarize(t.rounds) for t in targets if t.name in REFERENCES}
    add_ratios(columns, references)
    return {"profiles": columns, "references": references}


def _chat_result(
    database: Database, seconds: float, rooms: int, rate: float, pinning: Pinning
) -> dict[str, Any]:
    where = (
        f"both replicas on CPU {_cpus(pinning.servers)}; the message generator, Redis and "
        f"PostgreSQL on CPU {_cpus(pinning.load)} (sched_setaffinity on every thread)"
    )
    return {
        "load_generator": (
            f"statelab.lab.chatload.measure, {rate:g} messages/s offered for {seconds:g} s, "
            f"{rooms} room(s)"
        ),
        "pinning": pinning.as_json() | ({"note": where} if pinning.pinned else {}),
        "profiles": {},
        "references": {},
        "chat": chat(database, seconds, rooms, rate, pinning),
        "scale_out": [],
        "scale_out_note": "not measured for the chat workload",
    }


# -- presentation --------------------------------------------------------------------

HEADERS = (
    "server",
    "requests/s",
    "µs CPU per request",
    "p50 ms",
    "p99 ms",
    "errors",
    "rps vs stateful",
    "CPU vs stateful",
    "vs FastAPI floor",
)


def _spread(median: float, rounds: list[float]) -> str:
    if len(rounds) < 2:
        return f"{median:.0f}"
    return f"{median:.0f} ({min(rounds):.0f}-{max(rounds):.0f})"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def rows(result: dict[str, Any]) -> list[list[str]]:
    """The bench table (``HEADERS``): references first, then the columns."""
    servers = [(f"ref: {n}", m) for n, m in result.get("references", {}).items()]
    servers += list(result.get("profiles", {}).items())
    return [
        [
            name,
            _spread(m["rps"], m["rounds_rps"]),
            _spread(m["cpu_us_per_request"], m["rounds_cpu_us"]),
            f"{m['p50_ms']:.1f}",
            f"{m['p99_ms']:.1f}",
            str(m["errors"]),
            _times(m.get("ratio")),
            _times(m.get("cpu_ratio")),
            _times(m.get("ratio_to_floor")),
        ]
        for name, m in servers
    ]


SCALE_HEADERS = ("replicas", "requests/s", "µs CPU per request", "p99 ms", "errors",
                 "efficiency", "marginal")  # fmt: skip


def scale_rows(result: dict[str, Any]) -> list[list[str]]:
    """The scale-out curve as table rows (``SCALE_HEADERS``)."""
    return [
        [
            str(p["replicas"]),
            f"{p['rps']:.0f}",
            f"{p['cpu_us_per_request']:.0f}",
            f"{p['p99_ms']:.1f}",
            str(p["errors"]),
            _times(p.get("efficiency")),
            _times(p.get("marginal")),
        ]
        for p in result.get("scale_out", [])
    ]


def chat_rows(result: dict[str, Any]) -> list[list[str]]:
    """The chat measurement, one row per figure."""
    return [[key, str(value)] for key, value in result.get("chat", {}).items()]


def _markdown_table(headers: Collection[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in body]


def to_markdown(result: dict[str, Any]) -> str:
    """The run as Markdown tables (the README's speed section is pasted from it)."""
    lines = [f"`statelab bench --workload {result['workload']}`: {result['description']}", ""]
    if result.get("chat"):
        lines += _markdown_table(("chat", "measured"), chat_rows(result))
        lines += ["", f"Load: {result['load_generator']}. Pinning: {result['pinning']['note']}."]
    else:
        lines += _markdown_table(HEADERS, rows(result))
        lines += ["", f"Load: {result['load_generator']}. Pinning: {result['pinning']['note']}."]
    if result.get("scale_out"):
        lines += ["", f"Scale-out ({result['scale_out_note']}):", ""]
        lines += _markdown_table(SCALE_HEADERS, scale_rows(result))
    return "\n".join(lines) + "\n"
