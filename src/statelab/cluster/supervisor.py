"""The supervisor: starts a whole cluster, keeps watch over it, changes it on request.

``Cluster.start`` brings up, in order and each checked ready: Redis (only when a
placement needs it), PostgreSQL or SQLite, the schema migration, replicas
``r1..rN`` and HAProxy. ``Cluster.stop`` stops them in reverse order. While it
runs, ``Cluster.watch`` notices processes that exit and HAProxy's view of each
replica changing, writes both to the events log, and (with ``self_heal``)
restarts a dead replica after a short delay, as Kubernetes would.

Ports: ``--port 0`` and ``--control-port 0`` let the cluster choose. Every port
it publishes is claimed before ``cluster.json`` names it: the control API's socket
is bound at preflight and held; each server's port is chosen outside the kernel's
ephemeral range and checked, and a server whose port was taken anyway moves to
another (see ``statelab.cluster.servers``). A replica restarted later keeps its
port when it can; if not, its load-balancer slot is re-pointed at the new one.

Everything lives in the run folder (see ``statelab.cluster.runfolder``);
``statelab.cluster.up`` is what ``statelab up`` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from statelab.cluster.cgroups import MemoryLimit
from statelab.cluster.haproxy import (
    HAProxyServer,
    LoadBalancerConfig,
    ServerStat,
    runtime_socket_path,
)
from statelab.cluster.members import (
    Member,
    Replica,
    Worker,
    proc_usage,
    process_status,
    replica_state,
    signal_name,
    statelab_command,
    worker_status,
)
from statelab.cluster.netdelay import DelayProxy
from statelab.cluster.redis import TOPOLOGIES, RedisTopology, SingleRedis, make_topology
from statelab.cluster.runfolder import (
    EVENTS_FILE,
    STATE_FILE,
    ClusterError,
    EventLog,
    reap_stale,
    redact,
    start_time,
)
from statelab.cluster.servers import (
    LOOPBACK,
    PERSISTENCE,
    ManagedProcess,
    PortedProcess,
    PostgresServer,
    RedisServer,
    ServerError,
    bind_port,
    default_picker,
    require_free_port,
)
from statelab.config import NEEDS_REDIS, Profile, placement_conflict, resolve_placements
from statelab.db.migrate import upgrade

Balance = Literal["roundrobin", "sticky"]

__all__ = ["Cluster", "ClusterError", "ClusterOptions"]

#: How often the watcher looks at processes and HAProxy's stats; this bounds how
#: precisely the events log times a replica going DOWN.
WATCH_INTERVAL = 0.1


@dataclass
class ClusterOptions:
    """Everything ``statelab up`` can be told."""

    profile: Profile = Profile.stateless
    replicas: int = 3
    port: int = 8000  # 0: choose a free port
    control_port: int | None = None  # default: port + 1 (0 with port 0); 0: choose
    database: str = "sqlite"  # sqlite | postgres | a database URL
    place: dict[str, str] = field(default_factory=dict)
    run_dir: Path = Path("run")
    self_heal: bool = False
    self_heal_delay: float = 1.0
    fresh: bool = False  # wipe the data a previous run left in run_dir
    slots: int = 16  # most replicas the load balancer can take without a restart
    replica_env: dict[str, str] = field(default_factory=dict)  # extra STATELAB_* settings
    workers: int | None = None  # default: 1 when jobs go to the queue, else 0
    ready_timeout: float = 30.0
    balance: Balance | None = None  # default: sticky for the stateful profile
    redis_persistence: str = "everysec"  # off | everysec | always
    redis_delay_proxy: bool = False  # a delaying TCP proxy between replicas and Redis
    redis_topology: str = "single"  # single | sentinel | cluster (statelab.cluster.redis)
    # Replicas a Redis write must reach before it is acknowledged (WAIT), and that a
    # primary needs connected to accept writes at all (min-replicas-to-write); 0: none.
    redis_wait: int = 0

    @property
    def placements(self) -> dict[str, str]:
        return resolve_placements(self.profile, self.place)

    @property
    def needs_redis(self) -> bool:
        return any(item in NEEDS_REDIS for item in self.placements.items())

    @property
    def effective_balance(self) -> Balance:
        """The balancing policy: as asked, else sticky for the stateful profile (its
        in-memory sessions need it) and round-robin for the others."""
        if self.balance is not None:
            return self.balance
        return "sticky" if self.profile is Profile.stateful else "roundrobin"

    @property
    def sticky(self) -> bool:
        return self.effective_balance == "sticky"

    @property
    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        return 1 if self.placements["jobs"] == "queue" else 0

    @property
    def wanted_control_port(self) -> int:
        if self.control_port is not None:
            return self.control_port
        return self.port + 1 if self.port else 0

    def check(self) -> None:
        ports = (self.port, self.wanted_control_port)
        if not all(0 <= p <= 65535 for p in ports):
            raise ClusterError("ports go from 1 to 65535 (0: choose a free one)", 400)
        if self.port and self.port == self.wanted_control_port:
            raise ClusterError("--port and --control-port must differ", 400)
        if not 1 <= self.replicas <= self.slots:
            raise ClusterError(f"--replicas must be between 1 and {self.slots}", 400)
        if self.worker_count and self.placements["jobs"] != "queue":
            raise ClusterError("workers only have work with jobs=queue", 400)
        if (conflict := placement_conflict(self.placements)) is not None:
            raise ClusterError(conflict, 400)
        if self.balance not in (None, "roundrobin", "sticky"):
            raise ClusterError("--balance must be roundrobin or sticky", 400)
        if self.redis_persistence not in PERSISTENCE:
            raise ClusterError(f"--redis-persistence must be one of {', '.join(PERSISTENCE)}", 400)
        if self.redis_delay_proxy and not self.needs_redis:
            raise ClusterError("--redis-delay-proxy: no placement of this cluster uses Redis", 400)
        self._check_redis_topology()

    def _check_redis_topology(self) -> None:
        if self.redis_topology not in TOPOLOGIES:
            raise ClusterError(f"--redis must be one of {', '.join(TOPOLOGIES)}", 400)
        single = self.redis_topology == "single"
        if self.redis_delay_proxy and not single:
            raise ClusterError("--redis-delay-proxy stands in front of one Redis (--redis single)")
        if not 0 <= self.redis_wait <= 2 or (self.redis_wait and single):
            raise ClusterError("--redis-wait: 0 to 2 replicas, with --redis sentinel|cluster", 400)


class Cluster:
    """The processes of one cluster and the operations the control API offers."""

    def __init__(self, options: ClusterOptions) -> None:
        options.check()
        self.options = options
        self.run_dir = options.run_dir.resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.control_port = options.wanted_control_port  # the bound one after preflight
        self.control_socket: socket.socket | None = None  # bound and listening from preflight on
        self._shop_port = options.port  # HAProxy's, chosen at preflight when 0
        self.events = EventLog(self.run_dir / EVENTS_FILE)
        self.redis: RedisServer | None = None  # the one server of --redis single
        self.redis_topology: RedisTopology | None = None  # every Redis process
        self.delay_proxy: DelayProxy | None = None
        self.memory = MemoryLimit()
        self.memory_limits: dict[str, int] = {}  # rss when limited + headroom, by replica
        self.postgres: PostgresServer | None = None
        self.database_url = ""
        self.replicas: dict[str, Replica] = {}
        self.workers: dict[str, Worker] = {}
        self.haproxy: HAProxyServer | None = None
        self.secret = ""
        self.started_at = time.time()
        self._stats: dict[str, ServerStat] = {}
        self._stopping = False
        self._preflight_done = False  # until then stop() must not touch the run folder
        self._exits_seen: set[int] = set()  # pids of non-replica processes seen dead
        self._ops = asyncio.Lock()  # add/remove/rolling restart/redis: one at a time
        self._tasks: set[asyncio.Task[None]] = set()

    # -- start and stop --------------------------------------------------------------

    @property
    def shop_port(self) -> int:
        return self.haproxy.port if self.haproxy is not None else self._shop_port

    @property
    def shop_url(self) -> str:
        return f"http://{LOOPBACK}:{self.shop_port}"

    @property
    def control_url(self) -> str:
        return f"http://{LOOPBACK}:{self.control_port}"

    def preflight(self) -> None:
        """Refuse to start over a live cluster, kill what a crashed one left, claim
        the ports. The control API's is bound now and held until it serves; a given
        shop port is checked (HAProxy binds it later), port 0 gets a chosen one."""
        if self._preflight_done:
            return
        if leftovers := reap_stale(self.run_dir):
            self.events.emit("cluster.reaped", targets=leftovers)
        if self.options.port:
            require_free_port(self.options.port, "the shop (--port)")
        self.control_socket = bind_port(self.control_port, "the control API")
        self.control_port = self.control_socket.getsockname()[1]
        self._shop_port = self.options.port or default_picker().pick()
        self._preflight_done = True

    async def start(self) -> None:
        """Start every process, in dependency order, each checked ready."""
        opts = self.options
        self.preflight()
        if opts.fresh:
            self._wipe()
        self.secret = self._secret()
        self.events.emit("cluster.starting", profile=opts.profile.value, replicas=opts.replicas)
        if opts.needs_redis:
            await self._start_redis()
            if opts.redis_delay_proxy:
                assert self.redis is not None  # checked: a delay proxy needs --redis single
                self.delay_proxy = DelayProxy(self.run_dir, self.redis.port)
                await self._launch(self.delay_proxy)
        self.database_url = await self._database()
        await self._migrate()
        for i in range(1, opts.replicas + 1):
            self._new_replica(f"r{i}")
        for i in range(1, opts.worker_count + 1):
            self._new_worker(f"w{i}")
        members = [*self.replicas.values(), *self.workers.values()]
        await asyncio.gather(*(self._launch(m) for m in members))
        # A chosen shop port may still move if taken before HAProxy binds it.
        self.haproxy = HAProxyServer(self.run_dir, self._lb_config(), pinned=bool(opts.port))
        await self._launch(self.haproxy)
        self.save_state()
        self.events.emit("cluster.up", shop_url=self.shop_url, control_url=self.control_url)

    async def _start_redis(self) -> None:
        """The Redis processes of ``--redis`` (together), then joined and in sync."""
        opts = self.options
        topology = make_topology(
            opts.redis_topology,
            self.run_dir,
            opts.redis_persistence,
            min_replicas=opts.redis_wait,
        )
        self.redis_topology = topology
        if isinstance(topology, SingleRedis):
            self.redis = topology.server
        await asyncio.gather(*(self._launch(p) for p in topology.processes))
        began = time.monotonic()
        await asyncio.to_thread(topology.form)
        took = round(time.monotonic() - began, 3)
        self.events.emit("redis.formed", topology=topology.kind, url=topology.url, seconds=took)

    async def stop(self) -> None:
        """Stop everything that runs, in reverse order of starting."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        if not self._preflight_done:
            self.events.close()  # another cluster may own this folder: leave it alone
            return
        if self.control_socket is not None:
            self.control_socket.close()
        self.events.emit("cluster.stopping")
        if self.haproxy is not None:
            await asyncio.to_thread(self.haproxy.stop)
        # Replicas and workers started together and stop together, in parallel. With
        # the load balancer gone there is nothing to drain from: SIGINT, which stops
        # a replica without the drain period SIGTERM begins with.
        members = [*self.workers.values(), *self.replicas.values()]
        await asyncio.gather(*(asyncio.to_thread(m.stop_undrained, 20.0) for m in members))
        for server in (self.postgres, self.delay_proxy, *self._redis_processes()[::-1]):
            if server is not None:
                await asyncio.to_thread(server.stop)
        self.memory.release()
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)
        self.events.emit("cluster.stopped")
        self.events.close()

    async def _launch(self, proc: ManagedProcess) -> None:
        began = time.monotonic()
        was = proc.port if isinstance(proc, PortedProcess) else None
        # start() may run initdb or `haproxy -c`: keep the control API answering.
        await asyncio.to_thread(proc.start)
        self.save_state()  # from now on a later `up` can find and reap it
        self.events.emit("process.started", target=proc.name, pid=proc.pid)
        await asyncio.to_thread(proc.wait_ready, self.options.ready_timeout)
        took = round(time.monotonic() - began, 3)
        self.events.emit("process.ready", target=proc.name, pid=proc.pid, seconds=took)
        if isinstance(proc, PortedProcess) and proc.port != was:
            self._moved(proc, was)
        self.save_state()  # the pid (and port) of a start retried on another port

    def _moved(self, proc: PortedProcess, was: int | None) -> None:
        """``proc`` serves on another port than before: tell HAProxy if it routes there."""
        self.events.emit("process.moved", target=proc.name, was=was, now=proc.port)
        lb = self.haproxy
        if isinstance(proc, Replica) and lb is not None and proc.name in lb.cfg.servers:
            self._lb().api.set_address(proc.name, proc.port)
            lb.write_config(self._lb_config())

    def _secret(self) -> str:
        # One secret for all replicas (any of them must verify what another signed);
        # kept in the run folder so a restarted cluster still accepts its cookies.
        path = self.run_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        value = secrets.token_hex(32)  # 256 bits, always passes the strength check
        path.touch(mode=0o600)
        path.write_text(value + "\n")
        return value

    def _wipe(self) -> None:
        for name in ("redis-aof", "postgres", "replicas", "objects", "secret_key"):
            target = self.run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        for db in self.run_dir.glob("shop.db*"):
            db.unlink()
        # The other topologies' nodes: data, cluster identities, sentinel state.
        for left in [*self.run_dir.glob("redis-*-aof"), *self.run_dir.glob("redis-*-nodes.conf"),
                     *self.run_dir.glob("sentinel-*.conf")]:  # fmt: skip
            shutil.rmtree(left) if left.is_dir() else left.unlink()

    async def _database(self) -> str:
        choice = self.options.database
        if choice == "sqlite":
            return f"sqlite:///{self.run_dir / 'shop.db'}"
        if choice in ("postgres", "postgresql"):
            self.postgres = PostgresServer(self.run_dir)
            await self._launch(self.postgres)
            return self.postgres.url
        return choice

    async def _migrate(self) -> None:
        """Bring the schema up to date, in a thread of ours (Alembic runs its own event
        loop): a process of its own would cost a Python start per cluster."""
        try:
            revision = await asyncio.to_thread(upgrade, self.database_url)
        except Exception as exc:  # anything Alembic or the driver raises
            raise ServerError(
                f"the migration of {redact(self.database_url)} failed: {exc}"
            ) from exc
        self.events.emit("database.migrated", url=redact(self.database_url), revision=revision)

    # -- replicas --------------------------------------------------------------------

    def _new_replica(self, rid: str) -> Replica:
        argv = [
            *statelab_command(),
            "serve",
            "--replica-id", rid,
            "--host", LOOPBACK,
            *self._shared_options(),
        ]  # fmt: skip
        replica = Replica(rid, self.run_dir, argv, self._member_env("replicas", rid))
        self.replicas[rid] = replica
        return replica

    def _new_worker(self, wid: str) -> Worker:
        argv = [*statelab_command(), "worker", "--worker-id", wid, *self._shared_options()]
        worker = Worker(wid, self.run_dir, argv, self._member_env("workers", wid))
        self.workers[wid] = worker
        return worker

    def _shared_options(self) -> list[str]:
        """What every replica and worker is told: the same profile and stores."""
        argv = ["--profile", self.options.profile.value, "--database-url", self.database_url]
        if self.redis_topology is not None:
            proxy = self.delay_proxy
            argv += ["--redis-url", proxy.url if proxy is not None else self.redis_topology.url]
        for kind, placement in self.options.place.items():
            argv += ["--place", f"{kind}={placement}"]
        return argv

    def _member_env(self, kind: str, name: str) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "STATELAB_SECRET_KEY": self.secret,
            "STATELAB_DATA_DIR": str(self.run_dir / kind / name),
            "STATELAB_REDIS_WAIT_REPLICAS": str(self.options.redis_wait),
            "STATELAB_OBJECT_STORE_URL": os.environ.get(
                "STATELAB_OBJECT_STORE_URL", (self.run_dir / "objects").as_uri()
            ),
            **self.options.replica_env,
        }

    def replica(self, rid: str) -> Replica:
        try:
            return self.replicas[rid]
        except KeyError:
            known = ", ".join(self.replicas) or "none"
            raise ClusterError(f"no replica {rid!r} (replicas: {known})", 404) from None

    def member(self, name: str) -> Member:
        """A replica or a worker, by id."""
        if name in self.workers:
            return self.workers[name]
        return self.replica(name)

    def _lb_config(self) -> LoadBalancerConfig:
        return LoadBalancerConfig(
            port=self.shop_port,
            socket_path=runtime_socket_path(self.run_dir),
            sticky=self.options.sticky,
            servers={rid: r.port for rid, r in self.replicas.items()},
            slots=self.options.slots,
        )

    def _lb(self) -> HAProxyServer:
        if self.haproxy is None or not self.haproxy.alive:
            raise ClusterError("the load balancer is not running", 503)
        return self.haproxy

    async def kill(self, rid: str, sig: signal.Signals = signal.SIGKILL) -> dict[str, Any]:
        """Send ``sig`` to a replica, a worker or a Redis process (``redis-2``,
        ``sentinel-1``; see ``status()["redis"]["processes"]``): SIGKILL is a crash,
        SIGTERM a graceful shutdown."""
        if (server := self._redis_process(rid)) is not None:
            return self._kill_redis(server, sig)
        member = self.member(rid)
        if not member.alive:
            raise ClusterError(f"{rid} is not running")
        event = "replica.kill" if isinstance(member, Replica) else "worker.kill"
        self.events.emit(event, target=rid, pid=member.pid, signal=sig.name)
        member.kill(sig)
        return {"id": rid, "pid": member.pid, "signal": sig.name}

    async def start_replica(self, rid: str, reason: str = "request") -> dict[str, Any]:
        """Start a replica (same port), worker or Redis process that is down; put a
        replica back in rotation, which also undoes a drain."""
        if (server := self._redis_process(rid)) is not None:
            return await self._start_redis_process(server)
        member = self.member(rid)
        async with member.lock:
            member.wanted = True
            if not member.alive:
                member.stop()  # collects the old exit status and any straggler
                self.events.emit("member.start", target=rid, reason=reason)
                await self._launch(member)
            if isinstance(member, Replica):
                self._lb().api.set_state(rid, "ready")
            self.save_state()
        if isinstance(member, Worker):
            return {"id": rid, **worker_status(member)}
        return self.replica_status(rid)

    async def drain(self, rid: str) -> dict[str, Any]:
        """No new requests for ``rid`` (sticky ones still come); in-flight ones finish."""
        self.replica(rid)
        self._lb().api.set_state(rid, "drain")
        self.events.emit("replica.drain", target=rid)
        return self.replica_status(rid)

    async def add_replica(self) -> dict[str, Any]:
        """Start one more replica and fill a load-balancer slot with it, live."""
        async with self._ops:
            lb = self._lb()
            free = [name for name in lb.cfg.slot_names() if name not in self.replicas]
            if not free:
                raise ClusterError(f"all {self.options.slots} load-balancer slots are in use")
            replica = self._new_replica(free[0])
            try:
                # Held so the watcher leaves a start retried on another port alone.
                async with replica.lock:
                    await self._launch(replica)
            except ServerError:
                replica.stop()
                del self.replicas[replica.name]
                raise
            lb.api.set_address(replica.name, replica.port)
            lb.api.set_state(replica.name, "ready")
            lb.write_config(self._lb_config())
            self.save_state()
            self.events.emit("replica.added", target=replica.name, port=replica.port)
        return self.replica_status(replica.name)

    async def remove_replica(self, rid: str) -> dict[str, Any]:
        """Drain a replica, stop it gracefully and free its slot."""
        async with self._ops:
            replica = self.replica(rid)
            if len(self.replicas) == 1:
                raise ClusterError("refusing to remove the last replica")
            lb = self._lb()
            async with replica.lock:
                replica.wanted = False
                await self._drain_and_stop(replica)
                lb.api.set_state(rid, "maint")
                del self.replicas[rid]
            lb.write_config(self._lb_config())
            self.save_state()
            self.events.emit("replica.removed", target=rid)
        return {"id": rid, "removed": True}

    async def rolling_restart(self) -> dict[str, Any]:
        """Restart every replica, one at a time: drain, stop, start, wait until UP."""
        async with self._ops:
            lb = self._lb()
            began = time.monotonic()
            self.events.emit("rolling_restart.begin", replicas=list(self.replicas))
            for rid, replica in list(self.replicas.items()):
                async with replica.lock:
                    await self._drain_and_stop(replica)
                    await self._launch(replica)
                    lb.api.set_state(rid, "ready")
                    await self._wait_lb(rid, lambda s: s.status.startswith("UP"), 15.0)
                    self.save_state()
                self.events.emit("replica.restarted", target=rid, pid=replica.pid)
            took = round(time.monotonic() - began, 3)
            self.events.emit("rolling_restart.end", seconds=took)
        return {"restarted": list(self.replicas), "seconds": took}

    async def _drain_and_stop(self, replica: Replica) -> None:
        api = self._lb().api
        api.set_state(replica.name, "drain")
        self.events.emit("replica.drain", target=replica.name)
        # Requests already on their way finish before we ask the replica to stop.
        await self._wait_lb(replica.name, lambda s: s.sessions == 0, 5.0)
        self.events.emit("replica.stop", target=replica.name, pid=replica.pid)
        code = await asyncio.to_thread(replica.stop, 20.0)
        replica.exit_reported = True
        self.events.emit("process.exited", target=replica.name, code=code, expected=True)

    async def _wait_lb(self, rid: str, test: Callable[[ServerStat], bool], within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            stat = self._lb().api.show_stat().get(rid)
            if stat is not None and test(stat):
                return True
            await asyncio.sleep(0.05)
        return False

    # -- redis -----------------------------------------------------------------------

    def _redis_processes(self) -> list[PortedProcess]:
        return list(self.redis_topology.processes) if self.redis_topology is not None else []

    def _redis_process(self, name: str) -> PortedProcess | None:
        return self.redis_topology.get(name) if self.redis_topology is not None else None

    def _kill_redis(self, server: PortedProcess, sig: signal.Signals) -> dict[str, Any]:
        if not server.alive:
            raise ClusterError(f"{server.name} is not running")
        role = self._role_of(server)
        self.events.emit("redis.kill", target=server.name, pid=server.pid, signal=sig.name,
                         role=role)  # fmt: skip
        server.kill(sig)
        return {"id": server.name, "pid": server.pid, "signal": sig.name, "role": role}

    def _role_of(self, server: PortedProcess) -> str:
        described = self.redis_topology.describe() if self.redis_topology else []
        return next((str(p.get("role", "")) for p in described if p["name"] == server.name), "")

    async def _start_redis_process(self, server: PortedProcess) -> dict[str, Any]:
        """Start a Redis process again on its port and data: a node rejoins as what
        the sentinels or the cluster say it is now (a replica, once replaced)."""
        async with self._ops:
            if not server.alive:
                await asyncio.to_thread(server.stop)  # collect the old exit status
                self.events.emit("member.start", target=server.name, reason="request")
                await self._launch(server)
            self.save_state()
        return {"id": server.name, "pid": server.pid, "role": self._role_of(server)}

    async def restart_redis(self, hard: bool = True) -> dict[str, Any]:
        """Restart Redis on the same port and AOF: ``hard`` is ``kill -9``."""
        async with self._ops:
            redis = self.redis
            if redis is None:
                raise ClusterError(
                    f"profile {self.options.profile.value} runs without Redis"
                    if self.redis_topology is None
                    else "with several Redis processes, kill and start one by name (redis-1, ...)"
                )
            began = time.monotonic()
            mode = "kill" if hard else "clean"
            self.events.emit("redis.restart", target=redis.name, pid=redis.pid, mode=mode)
            if hard:
                redis.kill(signal.SIGKILL)
            await asyncio.to_thread(redis.stop)
            await self._launch(redis)
            self.save_state()
            took = round(time.monotonic() - began, 3)
            self.events.emit("redis.restarted", target=redis.name, pid=redis.pid, seconds=took)
        return {"pid": redis.pid, "mode": mode, "seconds": took}

    async def redis_stats(self) -> dict[str, Any]:
        """Redis's used memory, keys and calls per command (``INFO``), summed over the
        primaries that answer, for the lab."""
        if self.redis_topology is None:
            raise ClusterError(f"profile {self.options.profile.value} runs without Redis")
        stats: dict[str, Any] | None = await asyncio.to_thread(self.redis_topology.stats)
        if stats is None:
            raise ClusterError("Redis does not answer", 503)
        return stats

    def set_redis_delay(self, ms: float) -> dict[str, Any]:
        """Delay replica <-> Redis traffic by ``ms`` each way (needs the delay proxy)."""
        if self.delay_proxy is None:
            raise ClusterError(
                "this cluster has no delay proxy (start it with --redis-delay-proxy)"
            )
        self.delay_proxy.set_delay(ms)
        self.events.emit("redis.delay", target=self.delay_proxy.name, ms=ms)
        return {"delay_ms": ms}

    async def limit_memory(self, rid: str, headroom: int) -> dict[str, Any]:
        """Let replica ``rid`` take at most ``headroom`` more bytes from now on (a
        memory cgroup); past it the kernel kills it, which the watcher reports as any
        other exit. The status shows the limit as resident memory now + headroom."""
        replica = self.replica(rid)
        if not replica.alive or replica.pid is None:
            raise ClusterError(f"{rid} is not running")
        rss = proc_usage(replica.pid)["rss_bytes"] or 0
        await asyncio.to_thread(self.memory.limit, rid, replica.pid, headroom)
        self.memory_limits[rid] = rss + headroom
        self.events.emit("replica.memory_limit", target=rid, headroom=headroom, rss=rss)
        return self.replica_status(rid)

    async def grant_admin(self, username: str) -> dict[str, Any]:
        """Give a shop account the admin role (``statelab admin grant``)."""
        argv = [*statelab_command(), "admin", "grant", username,
                "--database-url", self.database_url]  # fmt: skip
        done = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise ClusterError(said[-1] if said else "statelab admin grant failed", 400)
        self.events.emit("admin.granted", target=username)
        return {"username": username, "admin": True}

    # -- watching --------------------------------------------------------------------

    async def watch(self) -> None:
        """Log exits and HAProxy state changes; restart dead replicas with self-heal."""
        while not self._stopping:
            self._check_processes()
            self._poll_lb()
            await asyncio.sleep(WATCH_INTERVAL)

    def _check_processes(self) -> None:
        for member in [*self.replicas.values(), *self.workers.values()]:
            if member.pid is None or member.alive or member.exit_reported:
                continue
            if member.lock.locked():
                continue  # an operation is stopping or starting it on purpose
            member.exit_reported = True
            code = member.returncode
            self.events.emit(
                "process.exited", target=member.name, code=code, signal=signal_name(code)
            )
            member.stop()  # reap: pid file, stragglers
            if member.wanted and self.options.self_heal and not self._stopping:
                self._spawn(self._heal(member))
        for proc in (*self._redis_processes(), self.postgres, self.haproxy):
            if proc is None or proc.pid is None or proc.alive or proc.pid in self._exits_seen:
                continue
            if not self._ops.locked():  # a Redis restart reports its own exit
                self._exits_seen.add(proc.pid)
                self.events.emit("process.exited", target=proc.name, code=proc.returncode)

    async def _heal(self, member: Member) -> None:
        await asyncio.sleep(self.options.self_heal_delay)
        if self._stopping or member.alive or not member.wanted:
            return
        if member.name not in self.replicas and member.name not in self.workers:
            return  # removed meanwhile
        try:
            await self.start_replica(member.name, reason="self-heal")
        except (ServerError, ClusterError) as exc:
            self.events.emit("self_heal.failed", target=member.name, error=str(exc))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _poll_lb(self) -> None:
        if self.haproxy is None or not self.haproxy.alive:
            return
        try:
            stats = self.haproxy.api.show_stat()
        except OSError:
            return
        for rid in self.replicas:
            new, old = stats.get(rid), self._stats.get(rid)
            if new is None:
                continue
            if new.status.startswith("UP"):
                self.replicas[rid].seen_up = True
            if old is None or old.status != new.status:
                self.events.emit(
                    "lb.state",
                    target=rid,
                    was=old.status if old else None,
                    now=new.status,
                    check=new.check_status,
                )
        self._stats = stats

    # -- status ----------------------------------------------------------------------

    def _fresh_stats(self) -> dict[str, ServerStat]:
        if self.haproxy is not None and self.haproxy.alive:
            with contextlib.suppress(OSError):
                self._stats = self.haproxy.api.show_stat()
        return self._stats

    def replica_status(self, rid: str) -> dict[str, Any]:
        return self._replica_status(self.replica(rid), self._fresh_stats().get(rid))

    def _replica_status(self, replica: Replica, stat: ServerStat | None) -> dict[str, Any]:
        return {
            "id": replica.name,
            "pid": replica.pid if replica.alive else None,
            "port": replica.port,
            "state": replica_state(replica, stat),
            "alive": replica.alive,
            "lb_status": stat.status if stat else None,
            "requests": stat.requests if stat else 0,
            "sessions": stat.sessions if stat else 0,
            "url": f"http://{LOOPBACK}:{replica.port}",
            **proc_usage(replica.pid if replica.alive else None),
            "memory_limit_bytes": self.memory_limits.get(replica.name),
        }

    def status(self) -> dict[str, Any]:
        """The shape ``statelab cluster status --json`` prints."""
        stats = self._fresh_stats()
        lb = self.haproxy
        return {
            "profile": self.options.profile.value,
            "shop_url": self.shop_url,
            "control_url": self.control_url,
            "run_dir": str(self.run_dir),
            "self_heal": self.options.self_heal,
            "balance": self.options.effective_balance,
            "placements": self.options.placements,
            "replicas": [
                self._replica_status(r, stats.get(rid)) for rid, r in self.replicas.items()
            ],
            "redis": self._redis_status(),
            "database": {
                "url": redact(self.database_url),
                **(process_status(self.postgres) or {}),
            },
            "haproxy": process_status(
                lb,
                port=self.shop_port,
                stats_socket=str(lb.cfg.socket_path) if lb else None,
                config=str(lb.config_path) if lb else None,
                requests=sum(s.requests for s in stats.values()),
                sessions=sum(s.sessions for s in stats.values()),
                retries=sum(s.retries for s in stats.values()),
                redispatches=sum(s.redispatches for s in stats.values()),
            ),
            "workers": [{"id": w.name, **worker_status(w)} for w in self.workers.values()],
        }

    def _redis_status(self) -> dict[str, Any] | None:
        """The Redis as a whole (``state`` up while writes have somewhere to go) and
        each of its processes with its role."""
        topology = self.redis_topology
        if topology is None:
            return None
        processes = topology.describe()
        writable = [p for p in processes if p.get("role") == "primary"]
        first = writable[0] if writable else None
        return {
            "name": first["name"] if first else "redis",
            "pid": first["pid"] if first else None,
            "state": "up" if writable else "down",
            "topology": topology.kind,
            "url": topology.url,
            "persistence": self.options.redis_persistence,
            "wait_replicas": self.options.redis_wait,
            "delay_proxy": (
                {"url": self.delay_proxy.url, "delay_ms": self.delay_proxy.delay_ms}
                if self.delay_proxy is not None
                else None
            ),
            "processes": processes,
        }

    def save_state(self) -> None:
        """Write ``cluster.json`` (atomically: the CLI may read it at any moment)."""
        procs: dict[str, dict[str, Any]] = {}
        for proc in self._processes():
            if proc.pid is not None and proc.alive:
                procs[proc.name] = {"pid": proc.pid, "start_time": start_time(proc.pid)}
                port = getattr(proc, "port", None)
                if port is not None:
                    procs[proc.name]["port"] = port
        state = {
            "version": 1,
            "profile": self.options.profile.value,
            "shop_url": self.shop_url,
            "control_url": self.control_url,
            "supervisor": {"pid": os.getpid(), "start_time": start_time(os.getpid())},
            "run_dir": str(self.run_dir),
            "events": str(self.events.path),
            "logs": str(self.run_dir / "logs"),
            "database_url": redact(self.database_url),
            "redis_url": self.redis_topology.url if self.redis_topology else None,
            "processes": procs,
        }
        tmp = self.run_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.run_dir / STATE_FILE)

    def _processes(self) -> Iterator[ManagedProcess]:
        yield from self._redis_processes()
        for proc in (self.delay_proxy, self.postgres, self.haproxy):
            if proc is not None:
                yield proc
        yield from self.replicas.values()
        yield from self.workers.values()
