"""A cluster's run folder as others see it: where its state and events live, how to
read them, what a crashed supervisor left behind, and the errors cluster operations
raise. Imported by the supervisor, the control API's server and its client alike,
so that none of them imports another.

Everything a cluster keeps lives in the run folder::

    run/
      cluster.json     ports, pids and URLs: how ``statelab cluster ...`` finds us
      events.jsonl     one JSON object per line, with a Unix timestamp ``ts``
      logs/NAME.log    stdout+stderr of each process (r1, redis, haproxy, ...)
      pids/NAME.pid    the PID of each running process
      haproxy.cfg      the generated load-balancer config; haproxy.sock its API
      redis.conf       the generated Redis config; redis-aof/ its append-only file
      shop.db          the SQLite database (unless PostgreSQL or a URL is used)
      replicas/rN/     each replica's own folder (STATELAB_DATA_DIR)
      objects/         the shared object store for uploads (file://)
      secret_key       the cluster's shared signing secret (mode 0600)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_FILE = "cluster.json"
EVENTS_FILE = "events.jsonl"


class ClusterError(RuntimeError):
    """A request the cluster cannot honour; ``status`` is the HTTP code to answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class ClusterNotFound(ClusterError):
    """No cluster state in the run folder, or its supervisor does not answer."""


class EventLog:
    """Append-only JSON lines with wall-clock timestamps, plus the recent ones in memory."""

    def __init__(self, path: Path, keep: int = 2000) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", buffering=1, encoding="utf-8")
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._last_ts = 0.0
        self._seq = 0

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record ``event`` now; ``fields`` must be JSON-serialisable."""
        # Strictly increasing timestamps: a reader polling with ``since=<last ts>``
        # must not miss an event logged in the same millisecond as the previous one.
        now = max(round(time.time(), 3), round(self._last_ts + 0.001, 3))
        self._last_ts = now
        self._seq += 1
        record = {
            "ts": now,
            "at": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "seq": self._seq,
            "event": event,
            **fields,
        }
        self._file.write(json.dumps(record) + "\n")
        self.recent.append(record)
        log.info("%s %s", event, fields)
        return record

    def since(self, ts: float = 0.0) -> list[dict[str, Any]]:
        return [e for e in self.recent if e["ts"] > ts]

    def close(self) -> None:
        self._file.close()


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """The ``cluster.json`` of ``run_dir``, or ``None`` when there is none."""
    try:
        data: dict[str, Any] = json.loads((run_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    return data


def start_time(pid: int) -> int | None:
    """The kernel's start time of live process ``pid`` (clock ticks since boot), to
    tell it from a recycled PID; ``None`` when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] == "Z":  # dead, waiting for a parent that may never reap it
        return None
    return int(fields[19])


def same_process(entry: dict[str, Any]) -> bool:
    pid = entry.get("pid")
    return isinstance(pid, int) and start_time(pid) == entry.get("start_time") is not None


def reap_stale(run_dir: Path) -> list[str]:
    """Refuse to start over a live cluster; kill what a crashed supervisor left.

    A process is only killed when its PID *and* kernel start time match what we
    recorded, so a recycled PID is never touched.
    """
    state = read_state(run_dir)
    if state is None:
        return []
    supervisor = state.get("supervisor", {})
    if same_process(supervisor):
        raise ClusterError(
            f"a cluster is already running from {run_dir} (supervisor pid "
            f"{supervisor['pid']}); stop it first or use another --run-dir"
        )
    killed = {}
    for name, entry in state.get("processes", {}).items():
        if same_process(entry):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(entry["pid"], signal.SIGKILL)
            killed[name] = entry
    # Their ports must be free before we start again: wait until they are gone.
    deadline = time.monotonic() + 5.0
    while any(same_process(e) for e in killed.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    return list(killed)


def redact(url: str) -> str:
    """A URL without its password, for logs and status."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
