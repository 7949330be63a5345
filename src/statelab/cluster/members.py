"""The cluster's own processes: replicas (``statelab serve``) and job workers
(``statelab worker``) — killable, restartable, and described for the status."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from statelab.cluster.haproxy import ServerStat
from statelab.cluster.servers import LOOPBACK, ManagedProcess, PortedProcess


def http_ok(port: int, path: str = "/readyz", timeout: float = 1.0) -> bool:
    """Whether ``GET http://127.0.0.1:port/path`` answers 200."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class Member(ManagedProcess):
    """A process of the service itself (replica or worker): killable, restartable."""

    def __init__(self, name: str, run_dir: Path, argv: list[str], env: dict[str, str]):
        super().__init__(name, run_dir, argv, env=env)  # for a Replica: PortedProcess's
        self.wanted = True  # should be running: self-heal restarts it if it dies
        self.exit_reported = False
        self.lock = asyncio.Lock()  # one lifecycle change at a time

    def start(self) -> None:
        super().start()
        self.exit_reported = False

    def stop_undrained(self, timeout: float = 10.0) -> int | None:
        """Stop without the drain period SIGTERM begins with (SIGINT), when no load
        balancer sends it anything any more; SIGTERM, then SIGKILL, if it lingers."""
        if self._proc is not None and self.alive:
            self.kill(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
        return self.stop(timeout)


class Replica(Member, PortedProcess):
    """One ``statelab serve`` process on a port of its own (``--port`` is added to
    ``argv``); ready when its ``/readyz`` answers 200.

    Its port is movable: when another listener took it while the replica was down,
    the replica starts on a new one and the supervisor re-points its HAProxy slot.
    """

    MOVABLE = True

    def __init__(self, rid: str, run_dir: Path, argv: list[str], env: dict[str, str]):
        super().__init__(rid, run_dir, argv, env)
        self.seen_up = False  # HAProxy has seen it UP since its last start

    def command(self) -> list[str]:
        return [*super().command(), "--port", str(self.port)]

    def is_ready(self) -> bool:
        return http_ok(self.port)

    def start(self) -> None:
        super().start()
        self.seen_up = False


class Worker(Member):
    """One ``statelab worker`` process. It serves no port: ready once it has stayed
    up long enough to have connected (a bad setting makes it exit at once)."""

    SETTLE_SECONDS = 1.0

    def is_ready(self) -> bool:
        started = self.started_at or time.monotonic()
        return self.alive and time.monotonic() - started >= self.SETTLE_SECONDS


def signal_name(code: int | None) -> str | None:
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return None


def replica_state(replica: Replica, stat: ServerStat | None) -> str:
    """``up``, ``down``, ``draining`` or ``starting``, as HAProxy sees the replica."""
    if stat is None or stat.admin == "maint":
        return "starting" if replica.alive and stat is None else "down"
    if stat.admin == "drain":
        return "draining"
    if stat.status.startswith(("UP", "no check")):
        return "up"
    # HAProxy says DOWN: a process that has not passed its first checks is starting.
    return "starting" if replica.alive and not replica.seen_up else "down"


def worker_status(worker: Worker) -> dict[str, Any]:
    return process_status(worker) or {}


def process_status(proc: ManagedProcess | None, **extra: Any) -> dict[str, Any] | None:
    if proc is None:
        return None
    return {
        "name": proc.name,
        "pid": proc.pid if proc.alive else None,
        "state": "up" if proc.alive else "down",
        **extra,
    }


_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_usage(pid: int | None) -> dict[str, Any]:
    """CPU seconds used so far and resident memory of process ``pid`` (from /proc)."""
    if pid is None:
        return {"cpu_seconds": None, "rss_bytes": None}
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return {"cpu_seconds": None, "rss_bytes": None}
    # After the ")": state is field 3 of proc(5); utime 14, stime 15, rss 24.
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    return {"cpu_seconds": round(cpu, 3), "rss_bytes": int(fields[21]) * _PAGE}


def statelab_command() -> list[str]:
    """How to run our own CLI in a child process, whatever the install."""
    return [sys.executable, "-m", "statelab"]
