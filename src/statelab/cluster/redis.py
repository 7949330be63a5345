"""The Redis a cluster runs: one server, a primary watched by Sentinel, or a Redis
Cluster — every process a ``PortedProcess`` in the run folder, killable and
restartable by name, each described with its role.

- ``single``: ``redis`` — one ``redis-server`` (``statelab.cluster.servers``).
- ``sentinel``: ``redis-1`` (the first primary), ``redis-2`` and ``redis-3`` (its
  replicas) and ``sentinel-1..3`` watching them (quorum 2, down after
  ``DOWN_AFTER_MS``). When the primary dies the sentinels promote a replica and
  clients that ask them (``redis+sentinel://``) follow.
- ``cluster``: ``redis-1..6`` with ``cluster-enabled``, joined by ``redis-cli
  --cluster create`` into 3 primaries with one replica each. When a primary dies
  its replica takes its slots over after ``NODE_TIMEOUT_MS``; meanwhile only the
  keys of those slots are unavailable.

Replication is asynchronous: a write acknowledged by the primary and not yet sent
to a replica is lost when that replica is promoted. ``min_replicas`` sets
``min-replicas-to-write`` (the primary refuses writes without that many live
replicas); ``WAIT`` on the client side (``STATELAB_REDIS_WAIT_REPLICAS``) is what
makes a write's acknowledgement wait for a replica.

Failure model of the harness itself: a process that does not get ready fails the
start with its log (``ServerError``); roles are read with a short timeout, so a
dead node shows as ``down``, never as a hang.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import hiredis

from statelab.cluster.servers import (
    LOOPBACK,
    PortedProcess,
    PortPicker,
    RedisServer,
    ServerError,
    find_binary,
    port_is_free,
)

__all__ = [
    "TOPOLOGIES",
    "ClusterRedis",
    "RedisNode",
    "RedisTopology",
    "SentinelProcess",
    "SentinelRedis",
    "SingleRedis",
    "make_topology",
]

Topology = Literal["single", "sentinel", "cluster"]
TOPOLOGIES: tuple[Topology, ...] = ("single", "sentinel", "cluster")

#: The name the sentinels know the primary by (the URL's PRIMARY_NAME).
PRIMARY_NAME = "statelab"
#: How long a sentinel waits for a silent primary before it calls it down.
DOWN_AFTER_MS = 1000
#: How long a cluster node waits for a silent node before it calls it failed.
NODE_TIMEOUT_MS = 1000
#: Sentinels that must agree the primary is down before one of them fails over.
QUORUM = 2


# -- talking to a node (no client library: a status must never hang) -------------------


def ask(port: int, *command: str, timeout: float = 0.5, password: str | None = None) -> Any:
    """One command to the Redis on ``port`` (after AUTH with ``password``); its reply
    (an error reply is returned, not raised, as a ``ReplyError``)."""
    reader = hiredis.Reader(encoding="utf-8", replyError=ReplyError)
    commands = [("AUTH", password), command] if password is not None else [command]
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(b"".join(hiredis.pack_command(c) for c in commands))  # type: ignore[arg-type]
        replies: list[Any] = []
        while len(replies) < len(commands):
            while (reply := reader.gets()) is False:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("Redis closed the connection")
                reader.feed(chunk)
            replies.append(reply)
    return replies[-1]


class ReplyError(Exception):
    """An error reply of Redis (``-ERR ...``)."""


def info_fields(port: int, section: str, password: str | None = None) -> dict[str, str]:
    """``INFO section`` as a dict; empty when the node does not answer."""
    return _fields(port, "INFO", section, password=password)


def _cluster_info(port: int, password: str | None) -> dict[str, str]:
    return _fields(port, "CLUSTER", "INFO", password=password)


def _fields(port: int, *command: str, password: str | None) -> dict[str, str]:
    try:
        text = ask(port, *command, password=password)
    except OSError:
        return {}
    if not isinstance(text, str):
        return {}
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k: v.strip() for k, v in fields}


# -- processes ----------------------------------------------------------------------------


class RedisNode(RedisServer):
    """A ``redis-server`` that is part of a topology: a replica of another node, a
    cluster node, and/or a primary that needs live replicas to accept writes."""

    def __init__(
        self,
        run_dir: Path,
        name: str,
        *,
        persistence: str,
        ports: PortPicker | None = None,
        primary: Callable[[], int | None] | None = None,
        cluster: bool = False,
        min_replicas: int = 0,
        password: str | None = None,
    ) -> None:
        self.password = password  # AUTH for clients, for replication, and for our checks
        super().__init__(run_dir, name=name, persistence=persistence, ports=ports)
        self._primary = primary  # the port this node replicates from at (re)start
        self.cluster = cluster
        self.min_replicas = min_replicas
        # The cluster bus port defaults to port + 10000, which may be past 65535 or taken.
        self.bus_port = self.ports.pick() if cluster else None

    def prepare(self) -> None:
        """Before each spawn: the bus port, too, must still be ours to take."""
        if self.bus_port is not None and not port_is_free(self.bus_port):
            self.bus_port = self.ports.pick()
        super().prepare()

    def _move(self, why: str) -> None:
        # "Address already in use" may be about either port: both move.
        super()._move(why)
        if self.bus_port is not None:
            self.bus_port = self.ports.pick()

    def config(self) -> str:
        lines = [super().config().rstrip("\n")]
        primary = self._primary() if self._primary is not None else None
        if primary is not None and primary != self.port:
            lines.append(f"replicaof {LOOPBACK} {primary}")
        if self.min_replicas:
            lines += [f"min-replicas-to-write {self.min_replicas}", "min-replicas-max-lag 10"]
        if self.password is not None:
            lines += [f'requirepass "{self.password}"', f'masterauth "{self.password}"']
        if self.cluster:
            lines += [
                "cluster-enabled yes",
                f"cluster-port {self.bus_port}",
                f'cluster-config-file "{self.name}-nodes.conf"',
                f"cluster-node-timeout {NODE_TIMEOUT_MS}",
                # A primary's replica may take over even after a short disconnection.
                "cluster-replica-validity-factor 0",
                # Keys of live primaries stay readable and writable while one is down.
                "cluster-require-full-coverage no",
            ]
        return "\n".join(lines) + "\n"

    def is_ready(self) -> bool:
        return bool(self.ask("PING") == "PONG")  # "-LOADING" while the AOF is replayed

    def ask(self, *command: str) -> Any:
        """``ask`` this node, authenticated."""
        return ask(self.port, *command, password=self.password)

    def info(self, section: str) -> dict[str, str]:
        return info_fields(self.port, section, self.password)

    def role(self) -> dict[str, Any]:
        """``primary``/``replica`` (or ``down``) and what the node says of itself."""
        fields = self.info("replication") if self.alive else {}
        if not fields:
            return {"role": "down"}
        role = "primary" if fields.get("role") == "master" else "replica"
        found: dict[str, Any] = {"role": role}
        if role == "replica":
            found["primary_port"] = int(fields.get("master_port", 0))
            found["link"] = fields.get("master_link_status", "")
        else:
            found["replicas"] = int(fields.get("connected_slaves", 0))
        if self.cluster:
            ranges = self.slot_ranges()
            found["slots"] = sum(high - low + 1 for low, high in ranges)
            found["slot_ranges"] = ranges
        return found

    def slot_ranges(self) -> list[tuple[int, int]]:
        """The hash slots this node serves, as (first, last) ranges (its ``myself``
        line of CLUSTER NODES)."""
        try:
            text = self.ask("CLUSTER", "NODES")
        except OSError:
            return []
        if not isinstance(text, str):
            return []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) > 2 and "myself" in parts[2]:
                # "[slot->-node]" entries are slots being migrated: counted where they live.
                return [_slot_range(spec) for spec in parts[8:] if not spec.startswith("[")]
        return []


def _slot_range(spec: str) -> tuple[int, int]:
    low, _, high = spec.partition("-")
    return int(low), int(high or low)


class SentinelProcess(PortedProcess):
    """``redis-server --sentinel`` watching the primary named ``PRIMARY_NAME``.

    Its config is written at each start with the primary as it is then (Sentinel
    rewrites the file as it learns; a restarted sentinel starts from what is true)."""

    def __init__(
        self,
        run_dir: Path,
        name: str,
        primary: Callable[[], int],
        ports: PortPicker | None,
        password: str | None = None,
    ) -> None:
        self.binary = find_binary("redis-server", "redis-server")
        self._primary = primary
        self.password = password  # of the Redis servers it watches
        super().__init__(name, run_dir, ports=ports)

    @property
    def config_path(self) -> Path:
        return self.run_dir / f"{self.name}.conf"

    def prepare(self) -> None:
        super().prepare()
        self.config_path.write_text(
            "\n".join(
                [
                    "# generated by statelab; Sentinel rewrites it while it runs",
                    f"bind {LOOPBACK}",
                    f"port {self.port}",
                    f'dir "{self.run_dir}"',
                    "daemonize no",
                    'logfile ""',
                    f"sentinel monitor {PRIMARY_NAME} {LOOPBACK} {self._primary()} {QUORUM}",
                    f"sentinel down-after-milliseconds {PRIMARY_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {PRIMARY_NAME} 10000",
                    f"sentinel parallel-syncs {PRIMARY_NAME} 1",
                    *(
                        [f'sentinel auth-pass {PRIMARY_NAME} "{self.password}"']
                        if self.password
                        else []
                    ),
                    "",
                ]
            )
        )

    def command(self) -> list[str]:
        return [self.binary, str(self.config_path), "--sentinel"]

    def is_ready(self) -> bool:
        return bool(ask(self.port, "PING") == "PONG")

    def primary_port(self) -> int | None:
        """The primary's port as this sentinel sees it now; None if it does not answer."""
        try:
            reply = ask(self.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", PRIMARY_NAME)
        except OSError:
            return None
        return int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None

    def role(self) -> dict[str, Any]:
        return {"role": "sentinel" if self.alive else "down", "sees_primary": self.primary_port()}


# -- topologies ----------------------------------------------------------------------------


class RedisTopology:
    """The Redis processes of one kind of deployment, in start order, and the URL the
    replicas and workers are given."""

    kind: Topology = "single"

    def __init__(self) -> None:
        self.processes: list[PortedProcess] = []

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def nodes(self) -> list[RedisNode]:
        """The data-holding servers (not the sentinels)."""
        return [p for p in self.processes if isinstance(p, RedisNode)]

    def get(self, name: str) -> PortedProcess | None:
        return next((p for p in self.processes if p.name == name), None)

    def form(self) -> None:
        """After every process is ready: join them (a cluster) and wait until usable."""

    def start(self, timeout: float = 30.0) -> None:
        """Start every process, wait until each is ready, then ``form``; on failure stop
        what was started. (The supervisor starts the processes itself, with events.)"""
        try:
            for proc in self.processes:
                proc.start()
            for proc in self.processes:
                proc.wait_ready(timeout)
            self.form()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process, the last started first."""
        for proc in reversed(self.processes):
            proc.stop()

    def primary(self) -> RedisNode | None:
        """The node that takes writes now (single and Sentinel), if one does."""
        for node in self.nodes:
            if node.alive and node.role().get("role") == "primary":
                return node
        return None

    def stats(self) -> dict[str, Any] | None:
        """Used memory, keys and calls per command, summed over the primaries that
        answer (None if none does)."""
        memory = keys = answered = 0
        calls: dict[str, int] = {}
        for node in self.nodes:
            if not node.alive or node.info("replication").get("role") != "master":
                continue
            used = node.info("memory").get("used_memory")
            if used is None:
                continue
            answered += 1
            memory += int(used)
            with contextlib.suppress(OSError):
                keys += int(node.ask("DBSIZE"))
            for name, value in node.info("commandstats").items():
                count = int(value.split(",")[0].partition("=")[2])  # calls=N,usec=...
                command = name.removeprefix("cmdstat_")
                calls[command] = calls.get(command, 0) + count
        if not answered:
            return None
        return {"used_memory": memory, "keys": keys, "commandstats": calls}

    def describe(self) -> list[dict[str, Any]]:
        """Each process: name, pid, port, state and role, for the status."""
        out = []
        for proc in self.processes:
            role = proc.role() if isinstance(proc, RedisNode | SentinelProcess) else {}
            out.append(
                {
                    "name": proc.name,
                    "pid": proc.pid if proc.alive else None,
                    "port": proc.port,
                    "state": "up" if proc.alive else "down",
                    **role,
                }
            )
        return out


class SingleRedis(RedisTopology):
    """One ``redis-server`` named ``redis``."""

    kind: Topology = "single"

    def __init__(self, run_dir: Path, persistence: str, ports: PortPicker | None = None) -> None:
        super().__init__()
        self.server = RedisNode(run_dir, "redis", persistence=persistence, ports=ports)
        self.processes = [self.server]

    @property
    def url(self) -> str:
        return self.server.url


class SentinelRedis(RedisTopology):
    """A primary, its replicas and the sentinels that watch them."""

    kind: Topology = "sentinel"

    def __init__(
        self,
        run_dir: Path,
        persistence: str,
        *,
        replicas: int = 2,
        sentinels: int = 3,
        min_replicas: int = 0,
        password: str | None = None,
        ports: PortPicker | None = None,
    ) -> None:
        super().__init__()
        # Each node replicates from the primary the sentinels name when it (re)starts;
        # before they know one, redis-1 is it (and so, a primary itself).
        nodes = [
            RedisNode(
                run_dir,
                f"redis-{i}",
                persistence=persistence,
                ports=ports,
                primary=self.primary_port,
                min_replicas=min_replicas,
                password=password,
            )
            for i in range(1, replicas + 2)
        ]
        self._first = nodes[0]
        self.sentinels = [
            SentinelProcess(run_dir, f"sentinel-{i}", self._monitored_port, ports, password)
            for i in range(1, sentinels + 1)
        ]
        self.processes = [*nodes, *self.sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{PRIMARY_NAME}/0"

    def primary_port(self) -> int | None:
        """Where the sentinels say the primary is (the first node before they know)."""
        for sentinel in self.sentinels:
            if sentinel.alive and (port := sentinel.primary_port()) is not None:
                return port
        return self._first.port

    def _monitored_port(self) -> int:
        return self.primary_port() or self._first.port

    def form(self) -> None:
        """Wait until every sentinel knows the primary and its replicas are in sync."""
        deadline = time.monotonic() + 30
        replicas = len(self.nodes) - 1
        while time.monotonic() < deadline:
            primary = self.primary()
            if primary is not None and self._in_sync(primary, replicas):
                seen = [s.primary_port() for s in self.sentinels]
                if all(p == primary.port for p in seen) and self._sentinels_know_each_other():
                    return
            time.sleep(0.1)
        raise ServerError("the Redis primary, its replicas and sentinels did not come together")

    def _in_sync(self, primary: RedisNode, replicas: int) -> bool:
        roles = [n.role() for n in self.nodes if n is not primary]
        linked = [r for r in roles if r.get("link") == "up" and r["primary_port"] == primary.port]
        return len(linked) >= replicas

    def _sentinels_know_each_other(self) -> bool:
        # "slaves=": a sentinel promotes only replicas it has heard from recently.
        wanted = (f"slaves={len(self.nodes) - 1}", f"sentinels={len(self.sentinels)}")
        for sentinel in self.sentinels:
            status = info_fields(sentinel.port, "sentinel").get("master0", "")
            if not all(w in status for w in wanted):
                return False
        return True


class ClusterRedis(RedisTopology):
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each."""

    kind: Topology = "cluster"

    def __init__(
        self,
        run_dir: Path,
        persistence: str,
        *,
        primaries: int = 3,
        replicas: int = 1,
        min_replicas: int = 0,
        password: str | None = None,
        ports: PortPicker | None = None,
    ) -> None:
        super().__init__()
        self.replicas_each = replicas
        self.processes = [
            RedisNode(
                run_dir,
                f"redis-{i}",
                persistence=persistence,
                ports=ports,
                cluster=True,
                min_replicas=min_replicas,
                password=password,
            )
            for i in range(1, primaries * (replicas + 1) + 1)
        ]
        self._primaries = primaries

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    def primary(self) -> RedisNode | None:
        return None  # every primary takes writes, each for its own slots

    def form(self) -> None:
        """``redis-cli --cluster create`` (first run) and wait for ``cluster_state:ok``."""
        if all(_cluster_info(n.port, n.password).get("cluster_known_nodes") == "1"
               for n in self.nodes):  # fmt: skip
            self._create()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(self._state_ok(n) for n in self.nodes) and self._replicas_linked():
                return
            time.sleep(0.1)
        raise ServerError("the Redis Cluster did not reach cluster_state:ok")

    def _create(self) -> None:
        cli = find_binary("redis-cli", "redis-tools")
        argv = [cli, "--cluster", "create", *(n.address for n in self.nodes),
                "--cluster-replicas", str(self.replicas_each), "--cluster-yes"]  # fmt: skip
        password = self.nodes[0].password
        # REDISCLI_AUTH, not -a: a password on the command line shows in `ps`.
        env = {**os.environ, "REDISCLI_AUTH": password} if password is not None else None
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, env=env
        )
        if done.returncode != 0:
            raise ServerError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")

    def _replicas_linked(self) -> bool:
        roles = [n.role() for n in self.nodes]
        replicas = [r for r in roles if r.get("role") == "replica"]
        wanted = self._primaries * self.replicas_each
        return len(replicas) >= wanted and all(r.get("link") == "up" for r in replicas)

    @staticmethod
    def _state_ok(node: RedisNode) -> bool:
        return _cluster_info(node.port, node.password).get("cluster_state") == "ok"

    def primaries(self) -> list[RedisNode]:
        """The nodes that serve slots now."""
        return [n for n in self.nodes if n.alive and n.role().get("role") == "primary"]


def make_topology(
    kind: str,
    run_dir: Path,
    persistence: str,
    *,
    min_replicas: int = 0,
    ports: PortPicker | None = None,
) -> RedisTopology:
    """The topology named ``kind`` (one of ``TOPOLOGIES``)."""
    if kind == "single":
        return SingleRedis(run_dir, persistence, ports)
    if kind == "sentinel":
        return SentinelRedis(run_dir, persistence, min_replicas=min_replicas, ports=ports)
    if kind == "cluster":
        return ClusterRedis(run_dir, persistence, min_replicas=min_replicas, ports=ports)
    raise ValueError(f"Redis topology {kind!r}: one of {', '.join(TOPOLOGIES)}")
