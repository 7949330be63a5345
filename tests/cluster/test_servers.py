"""The server processes we own: they start, answer, keep data, and leave nothing behind."""

from __future__ import annotations

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
    PostgresServer,
    RedisServer,
    ServerError,
    free_port,
)


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


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


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
