"""Control groups for the lab: a CPU quota (the bench's scale-out curve) and a memory
limit (the memory scenario) for one process at a time; and CPU affinity (the bench
pins each server to a core of its own, away from the load generator and the stores).

Only what the kernel offers writable is used: cgroup v1 hierarchies
(``/sys/fs/cgroup/cpu``, ``/sys/fs/cgroup/memory``) or the v2 unified one. Where
neither is writable (not root, or a container that hides them), ``CgroupError``
says so in one line, and the caller decides whether it can go without.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection
from pathlib import Path

from statelab.cluster.runfolder import ClusterError

V1 = Path("/sys/fs/cgroup")
V2 = Path("/sys/fs/cgroup")


class CgroupError(ClusterError):
    """The controller a limit needs is missing or not writable here."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 501)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _v1(controller: str, probe: str) -> Path | None:
    root = V1 / controller
    return root if (root / probe).exists() and os.access(root, os.W_OK) else None


def _v2(controller: str) -> Path | None:
    return (
        V2
        if controller in _read(V2 / "cgroup.controllers").split() and os.access(V2, os.W_OK)
        else None
    )


class _Groups:
    """Groups made under one hierarchy, each holding processes moved into it."""

    def __init__(self, root: Path | None, prefix: str) -> None:
        self.root = root
        self.prefix = prefix
        self.groups: dict[str, Path] = {}

    def make(self, name: str) -> Path:
        assert self.root is not None
        group = self.root / f"{self.prefix}-{os.getpid()}-{name}"
        group.mkdir(exist_ok=True)
        self.groups[name] = group
        return group

    def release(self) -> None:
        """Move what is left back to the root group and remove the groups."""
        for group in self.groups.values():
            assert self.root is not None
            for pid in _read(group / "cgroup.procs").split():
                with contextlib.suppress(OSError):  # the process is gone
                    (self.root / "cgroup.procs").write_text(pid)
            with contextlib.suppress(OSError):
                group.rmdir()
        self.groups.clear()


def pin(pid: int, cpus: Collection[int], *, children: bool = False) -> int:
    """Let every thread of process ``pid`` (and with ``children``, of every process
    it has started so far, recursively) run on ``cpus`` only; returns how many
    threads were pinned.

    ``sched_setaffinity`` moves one thread, and a thread or process inherits its
    creator's mask only when it is created: so every thread listed in
    ``/proc/PID/task`` is pinned, and the list is read again until it holds no
    thread not yet pinned (one started meanwhile by a thread not pinned yet). What
    the process starts later inherits the mask (a PostgreSQL backend, say). No
    cgroup, so no root needed for our own processes."""
    pinned: set[int] = set()
    while True:
        try:
            threads = {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}
        except FileNotFoundError as exc:
            raise ProcessLookupError(f"no process {pid} to pin") from exc
        new = threads - pinned
        if not new:
            break
        for tid in new:
            with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
                os.sched_setaffinity(tid, cpus)
        pinned |= new
    count = len(pinned)
    for child in _children(pid, pinned) if children else ():
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            count += pin(child, cpus, children=True)
    return count


def _children(pid: int, threads: Collection[int]) -> set[int]:
    """The processes the threads of ``pid`` started (``/proc/PID/task/TID/children``)."""
    found: set[int] = set()
    for tid in threads:
        found.update(int(c) for c in _read(Path(f"/proc/{pid}/task/{tid}/children")).split())
    return found


class CpuQuota(_Groups):
    """One CPU-limited cgroup per process, so a replica's throughput cannot grow by
    taking the cores the others would use. The kernel's own 100 ms period: with 10 ms
    periods a saturated replica at 0.2 CPU was measured spending about 1.5 times
    the CPU per request."""

    def __init__(self, share: float) -> None:
        super().__init__(_v1("cpu", "cpu.cfs_quota_us") or _v2("cpu"), "statelab-cpu")
        self.share = share

    @property
    def note(self) -> str:
        if self.root is None:
            return "no writable cgroup: replicas share all cores (the curve flattens early)"
        version = "v1" if self.root.name == "cpu" else "v2"
        return f"each replica limited to {self.share} CPU (cgroup {version} cpu quota)"

    def limit(self, name: str, pid: int) -> None:
        if self.root is None:
            return
        group = self.make(name)
        period = 100_000
        if self.root.name == "cpu":
            (group / "cpu.cfs_period_us").write_text(str(period))
            (group / "cpu.cfs_quota_us").write_text(str(int(period * self.share)))
        else:
            (group / "cpu.max").write_text(f"{int(period * self.share)} {period}")
        (group / "cgroup.procs").write_text(str(pid))


class MemoryLimit(_Groups):
    """Memory headroom for a running process: from the moment it is moved into its
    group, it may take at most ``headroom`` bytes more; past that the kernel
    reclaims, then kills it. (Memory it held before stays charged where it was,
    unless the kernel can move charges along, in which case they are added to the
    limit.) No swap to spill into: ``memsw`` is capped too where it exists."""

    def __init__(self) -> None:
        super().__init__(_v1("memory", "memory.limit_in_bytes") or _v2("memory"), "statelab-mem")

    def limit(self, name: str, pid: int, headroom: int) -> None:
        if self.root is None:
            raise CgroupError(
                "no writable memory cgroup (cgroup v1 /sys/fs/cgroup/memory or v2 with the "
                "memory controller): a memory limit needs root on such a machine"
            )
        group = self.groups.get(name) or self.make(name)
        v1 = self.root.name == "memory"
        try:
            if v1:
                # Deprecated (EINVAL) on recent kernels: then only new charges count.
                with contextlib.suppress(OSError):
                    (group / "memory.move_charge_at_immigrate").write_text("3")
            (group / "cgroup.procs").write_text(str(pid))
            held = int(_read(group / ("memory.usage_in_bytes" if v1 else "memory.current")) or 0)
            limit = str(held + headroom)
            if v1:
                (group / "memory.limit_in_bytes").write_text(limit)
                memsw = group / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    memsw.write_text(limit)
            else:
                (group / "memory.max").write_text(limit)
                (group / "memory.swap.max").write_text("0")
        except OSError as exc:
            raise ClusterError(f"could not limit {name} (pid {pid}): {exc}", 409) from exc

    def usage(self, name: str) -> int | None:
        group = self.groups.get(name)
        if group is None or self.root is None:
            return None
        value = _read(group / ("memory.usage_in_bytes" if self.root.name == "memory"
                               else "memory.current"))  # fmt: skip
        return int(value) if value.strip() else None
