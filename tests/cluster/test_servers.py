"""The server processes we own: they start, answer, keep data, and leave nothing behind."""

from __future__ import annotations

import random
import signal
import socket
import time
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from statelab.cluster.servers import (
    ManagedProcess,
    PortInUse,
    PortPicker,
    PostgresServer,
    RedisServer,
    ServerError,
    bind_port,
    ephemeral_port_range,
    reserved_ports,
)
from tests.support import listening


def _live_processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (parent pid, process group); zombies excluded."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def family(pid: int) -> set[int]:
    """``pid``, its descendants and its process group, as far as they are alive."""
    table = _live_processes()
    found = {p for p, (_, pgrp) in table.items() if pgrp == pid}
    if pid in table:
        found.add(pid)
    grew = True
    while grew:
        more = {p for p, (ppid, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return found


def wait_gone(pids: set[int], timeout: float = 5.0) -> set[int]:
    """The subset of ``pids`` still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = pids & set(_live_processes())
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_picked_ports_are_bindable_and_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_port_range()
    reserved = reserved_ports()
    picker = PortPicker()
    for _ in range(200):
        port = picker.pick()
        assert 1024 < port < 65536
        assert not low <= port <= high, f"{port} is in the ephemeral range {low}-{high}"
        assert not any(port in r for r in reserved)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", picker.pick()))


def test_the_picker_avoids_the_ephemeral_range_and_reserved_ports() -> None:
    picker = PortPicker(
        random.Random(1),
        ephemeral=(10000, 60000),
        reserved=[range(60001, 60011), range(65535, 65536)],
    )
    assert picker.ranges == [range(60011, 65535)]
    drawn = picker.candidates()
    assert all(60011 <= next(drawn) < 65535 for _ in range(2000))
    # Too little room above 10 000: the ports people use by habit are in play again.
    assert PortPicker(ephemeral=(10000, 65000), reserved=[]).ranges == [
        range(1025, 10000),
        range(65001, 65536),
    ]
    # No room at all: the whole range it is, and moving on a taken port must cover it.
    assert PortPicker(ephemeral=(1024, 65535), reserved=[]).ranges == [range(1025, 65536)]


def test_a_port_handed_out_is_not_handed_out_again_before_it_is_bound() -> None:
    """A Redis cluster node's bus port is picked long before redis-server binds it:
    nothing else may be given that port meanwhile."""
    picker = PortPicker(random.Random(3), ephemeral=(10000, 65000), reserved=[range(1025, 64901)])
    assert picker.size == 535  # 65001-65535
    picked = [picker.pick() for _ in range(300)]
    assert len(set(picked)) == 300


def test_the_kernels_port_settings_are_read_as_it_writes_them(tmp_path: Path) -> None:
    (tmp_path / "range").write_text("40000\t50000\n")
    (tmp_path / "reserved").write_text("8000-8010,9000\n")
    (tmp_path / "none").write_text("\n")
    assert ephemeral_port_range(tmp_path / "range") == (40000, 50000)
    assert reserved_ports(tmp_path / "reserved") == [range(8000, 8011), range(9000, 9001)]
    assert reserved_ports(tmp_path / "none") == []
    assert ephemeral_port_range(tmp_path / "missing") == (32768, 60999)


def test_bind_port_passes_over_a_port_taken_first() -> None:
    first, second = _first_two(seed=7)
    with listening(first):
        with bind_port(0, "a test", PortPicker(random.Random(7))) as sock:
            assert sock.getsockname()[1] == second
        with pytest.raises(PortInUse, match=rf"port {first} .* \(wanted for a test\)"):
            bind_port(first, "a test")


def _first_two(seed: int) -> tuple[int, int]:
    """The first two ports a picker seeded with ``seed`` draws."""
    drawn = PortPicker(random.Random(seed)).candidates()
    return next(drawn), next(drawn)


def test_redis_moves_off_a_port_taken_before_it_starts(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    taken = server.port
    with listening(taken), server:
        assert server.port != taken
        assert server.is_ready()
    assert f"moving from port {taken} to {server.port}" in server.log_path.read_text()


class _Outrun(RedisServer):
    """A Redis whose port someone else binds after our check and before redis-server
    does: the race ``prepare``'s check cannot close."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self.intruder: socket.socket | None = None

    def prepare(self) -> None:
        super().prepare()
        if self.intruder is None:
            self.intruder = socket.socket()
            self.intruder.bind(("127.0.0.1", self.port))
            self.intruder.listen()


def test_redis_moves_off_a_port_taken_while_it_starts(tmp_path: Path) -> None:
    server = _Outrun(tmp_path)
    try:
        with server:
            assert server.intruder is not None
            taken = server.intruder.getsockname()[1]
            assert server.port != taken
            assert server.is_ready()
        assert f"port {taken} was taken while redis started" in server.log_path.read_text()
        assert "Address already in use" in server.log_path.read_text()
    finally:
        if server.intruder is not None:
            server.intruder.close()


def test_a_served_port_is_kept_or_refused_on_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    with server:
        port = server.port
    with listening(port), pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1"):
        server.start()  # clients know this port: moving would strand them
    assert not server.alive
    with server:
        assert server.port == port


async def test_session_redis_answers(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        assert await client.ping() is True
        assert await client.dbsize() == 0  # flushed for this test
    finally:
        await client.aclose()


async def test_redis_restart_keeps_data_through_the_aof(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    with server:
        first_pid = server.pid
        client = aioredis.from_url(server.url)
        await client.set("kept", "yes")
        await client.aclose()
        assert server.stop() == 0  # a clean shutdown flushes the AOF
        server.start()
        server.wait_ready()
        assert server.pid != first_pid
        client = aioredis.from_url(server.url)
        assert await client.get("kept") == b"yes"
        await client.aclose()
    assert (tmp_path / "redis-aof").is_dir()


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    with server:
        pid = server.pid
        assert pid is not None
        assert server.pid_path.read_text().strip() == str(pid)
        everything = family(pid)
    assert not server.alive
    assert wait_gone(everything) == set()
    assert not server.pid_path.exists()


def test_kill_9_is_seen_and_a_restart_works(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    with server:
        server.kill(signal.SIGKILL)
        pid = server.pid
        assert pid is not None
        deadline = time.monotonic() + 5
        while server.alive and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.returncode == -signal.SIGKILL
        server.start()
        server.wait_ready()
        assert server.alive


def test_a_taken_port_is_a_clear_error(tmp_path: Path, redis_server: RedisServer) -> None:
    with pytest.raises(PortInUse, match=str(redis_server.port)):
        RedisServer(tmp_path, port=redis_server.port).start()


def test_a_process_that_dies_while_starting_fails_with_its_log(tmp_path: Path) -> None:
    proc = ManagedProcess(
        "broken", tmp_path, ["/bin/sh", "-c", "echo cannot start >&2; exit 3"], ready=lambda: False
    )
    proc.start()
    with pytest.raises(ServerError, match="cannot start"):
        proc.wait_ready(5)
    proc.stop()


async def test_session_postgres_gives_fresh_databases(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("select count(*) from pg_tables where schemaname='public'") == 0
        await conn.execute("create table t (x int)")
    finally:
        await conn.close()


def test_postgres_starts_and_stops_cleanly(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path, fsync=False)
    with server:
        pid = server.pid
        assert pid is not None
        url = server.create_database("other")
        assert url.endswith("/other")
        everything = family(pid)
        assert len(everything) > 1  # the postmaster and its helper processes
    assert not server.alive
    assert wait_gone(everything) == set()
