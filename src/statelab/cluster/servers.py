"""Real server processes owned by us: started in a run folder, stopped by PID.

``ManagedProcess`` is the one way statelab runs a binary: in its own session (so
a signal meant for it never reaches our terminal, and its children die with it),
stdout and stderr appended to ``<run_dir>/logs/<name>.log``, its PID written to
``<run_dir>/pids/<name>.pid``. ``PortedProcess`` adds the one TCP port it listens
on; ``RedisServer`` and ``PostgresServer`` build on that.

Ports: picking a port by binding port 0 and letting it go races with every other
process on the machine, because the kernel hands out that same (ephemeral) range
for outgoing connections. ``PortPicker`` chooses outside that range, so only other
listeners can take our port; ``PortedProcess`` and ``bind_port`` make that race
harmless by moving to another port when theirs was taken first. A port somebody
asked for by number is never moved: taken, it is a ``PortInUse`` error.

Exceptions::

    ServerError            a process failed to start, died, or did not get ready
    ├── MissingBinary      the executable is not installed (names the Debian package)
    ├── PortInUse          the port we were told to use is taken (or every one we tried)
    └── ServerExited       the process exited while starting (its output attached)
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "ManagedProcess",
    "MissingBinary",
    "PortInUse",
    "PortPicker",
    "PortedProcess",
    "PostgresServer",
    "RedisServer",
    "ServerError",
    "ServerExited",
    "bind_port",
    "ephemeral_port_range",
    "find_binary",
    "port_is_free",
    "require_free_port",
    "reserved_ports",
]

LOOPBACK = "127.0.0.1"


class ServerError(RuntimeError):
    """A managed process could not be started, died, or never got ready."""


class MissingBinary(ServerError):
    """An executable we need is not installed."""


class PortInUse(ServerError):
    """The requested port is already bound by someone else."""


class ServerExited(ServerError):
    """The process exited before it was ready; ``output`` is what it logged."""

    def __init__(self, message: str, code: int | None, output: str) -> None:
        super().__init__(message)
        self.code = code
        self.output = output


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether ``host:port`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR so a port in TIME_WAIT from our own previous run counts as free,
        # as it does for the servers we start (they all set it too).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def require_free_port(port: int, what: str) -> None:
    """Raise ``PortInUse`` with a clear message when ``port`` is taken."""
    if not port_is_free(port):
        raise _in_use(port, what)


def _in_use(port: int, what: str) -> PortInUse:
    return PortInUse(f"port {port} on {LOOPBACK} is already in use (wanted for {what})")


# -- choosing ports ------------------------------------------------------------------

_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
#: Linux's own default, for a system that does not say (no /proc).
_DEFAULT_EPHEMERAL = (32768, 60999)
#: Below this live the ports people give their own servers by habit (3000, 5432,
#: 6379, 8000, 8080); we leave them alone while the kernel leaves us room above.
PREFERRED_FLOOR = 10000
#: Fewer candidates than this above the floor: use every port above 1024 instead.
_MIN_POOL = 1000
#: Random candidates ``pick`` checks before it gives up (each is one bind()).
_PICK_TRIES = 100
#: Ports a ``PortedProcess`` or ``bind_port`` tries before giving up.
PORT_ATTEMPTS = 5
#: What redis-server, postgres, haproxy, uvicorn and werkzeug all say (in some case)
#: when bind() fails with EADDRINUSE.
_ADDRESS_IN_USE = re.compile(r"address already in use", re.IGNORECASE)


def ephemeral_port_range(path: Path = _PORT_RANGE) -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (both ends included)."""
    try:
        low, high = (int(n) for n in path.read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    return low, high


def reserved_ports(path: Path = _RESERVED_PORTS) -> list[range]:
    """``ip_local_reserved_ports`` (``"8000-8010,9000"``) as ranges; none when unreadable."""
    try:
        text = path.read_text().strip()
    except OSError:
        return []
    found = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        with contextlib.suppress(ValueError):
            found.append(range(int(low), int(high or low) + 1))
    return found


def _without(ranges: list[range], holes: Sequence[range]) -> list[range]:
    """``ranges`` with every port of ``holes`` taken out (all steps are 1)."""
    for hole in holes:
        kept = []
        for r in ranges:
            if hole.stop <= r.start or hole.start >= r.stop:
                kept.append(r)
                continue
            if r.start < hole.start:
                kept.append(range(r.start, hole.start))
            if hole.stop < r.stop:
                kept.append(range(hole.stop, r.stop))
        ranges = kept
    return ranges


class PortPicker:
    """Chooses ports for our listeners outside the kernel's ephemeral range.

    The kernel gives every outgoing connection a local port from the ephemeral range
    (``ip_local_port_range``), at any moment, anywhere on the machine: a port found
    free there can be gone a millisecond later. Outside it only listeners compete,
    and ``PortedProcess``/``bind_port`` move on when one got there first. Ports in
    ``ip_local_reserved_ports`` are reserved for someone's fixed listener: skipped.
    ``rng`` is injectable so a test can know the choices in advance.
    """

    def __init__(
        self,
        rng: random.Random | None = None,
        *,
        ephemeral: tuple[int, int] | None = None,
        reserved: Sequence[range] | None = None,
    ) -> None:
        # SystemRandom by default: no state to share with a forked child, which
        # would otherwise pick exactly the ports its parent picks.
        self._rng = rng if rng is not None else random.SystemRandom()
        # Ports handed out and perhaps not bound yet (a process still starting, a
        # Redis cluster node's bus port): never handed out twice.
        self._given: set[int] = set()
        low, high = ephemeral if ephemeral is not None else ephemeral_port_range()
        holes = [range(low, high + 1), *(reserved if reserved is not None else reserved_ports())]
        self.ranges = _without([range(PREFERRED_FLOOR, 65536)], holes)
        if self.size < _MIN_POOL:
            self.ranges = _without([range(1025, 65536)], holes)
        if not self.ranges:
            # The ephemeral range covers everything: we cannot avoid it, only retry.
            self.ranges = _without([range(1025, 65536)], holes[1:])

    @property
    def size(self) -> int:
        """How many ports this picker chooses from."""
        return sum(len(r) for r in self.ranges)

    def candidates(self) -> Iterator[int]:
        """Endless uniformly random ports from the allowed ranges."""
        if not self.ranges:
            raise ServerError("no port above 1024 is left: all are reserved")
        while True:
            index = self._rng.randrange(self.size)
            for r in self.ranges:
                if index < len(r):
                    yield r[index]
                    break
                index -= len(r)

    def pick(self, host: str = LOOPBACK) -> int:
        """A random allowed port that can be bound on ``host`` right now."""
        candidates = self.candidates()
        for _ in range(_PICK_TRIES):
            port = next(candidates)
            if port not in self._given and port_is_free(port, host):
                self._given.add(port)
                return port
        raise PortInUse(f"no free port on {host} after {_PICK_TRIES} tries")


_default_picker: PortPicker | None = None


def default_picker() -> PortPicker:
    """The process-wide picker (reads the kernel's ranges once)."""
    global _default_picker
    if _default_picker is None:
        _default_picker = PortPicker()
    return _default_picker


def bind_port(port: int, purpose: str, ports: PortPicker | None = None) -> socket.socket:
    """A TCP socket bound on loopback and listening, now owned by the caller.

    Binding and listening at once *is* the claim, so there is no race: ``port`` 0
    binds a picked port (another one if a listener took it first); any other port
    is bound as asked or ``PortInUse`` names ``purpose``. Listening at once matters:
    a socket only bound (with SO_REUSEADDR, as servers set it) does not stop another
    process from binding the same port and listening first. Connections that arrive
    before the caller serves wait in the backlog."""
    picker = ports or default_picker()
    for _ in range(PORT_ATTEMPTS):
        chosen = port or picker.pick()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # As every server we start does: a TIME_WAIT left by our previous run is no
        # reason to refuse.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, chosen))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            if port:
                raise _in_use(port, purpose) from exc
            continue
        return sock
    raise PortInUse(f"{PORT_ATTEMPTS} ports in a row were taken (wanted for {purpose})")


def find_binary(name: str, package: str, extra_dirs: Sequence[Path] = ()) -> str:
    """The path of executable ``name``; ``MissingBinary`` names the package to install."""
    for folder in extra_dirs:
        candidate = folder / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    # /usr/sbin is not on a non-root PATH on Debian, and haproxy lives there.
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if found is None:
        raise MissingBinary(f"{name} not found: install it with `apt-get install {package}`")
    return found


class ManagedProcess:
    """One child process in its own session, logging to a file, tracked by PID.

    Subclasses override ``command`` (and usually ``is_ready``); simple cases pass
    ``argv`` directly. ``start`` spawns, ``wait_ready`` polls ``is_ready`` and fails
    early with the log's tail if the process dies; ``stop`` sends SIGTERM, then
    SIGKILL, to the whole process group, so nothing is left behind.
    """

    def __init__(
        self,
        name: str,
        run_dir: Path,
        argv: Sequence[str] | None = None,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready: Callable[[], bool] | None = None,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.run_dir = Path(run_dir).resolve()
        self._argv = list(argv) if argv is not None else None
        self._env = env
        self._cwd = cwd
        self._ready = ready
        self.user = user
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self._log_mark = 0  # where this start's output begins in the log

    # -- what to run ---------------------------------------------------------------

    def command(self) -> list[str]:
        """The argv to execute; subclasses build it from their configuration."""
        if self._argv is None:
            raise NotImplementedError(f"{type(self).__name__} must define command()")
        return self._argv

    def environment(self) -> dict[str, str] | None:
        """The child's environment; ``None`` inherits ours."""
        return self._env

    def is_ready(self) -> bool:
        """Whether the process serves; by default, merely that it is running."""
        return self._ready() if self._ready is not None else self.alive

    def prepare(self) -> None:
        """Hook run before each spawn (config files, data folders)."""

    # -- where things go -----------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / "pids" / f"{self.name}.pid"

    # -- lifecycle -----------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> None:
        """Spawn the process (in a new session); does not wait for readiness."""
        if self.alive:
            raise ServerError(f"{self.name} is already running (pid {self.pid})")
        self._reap()
        self.prepare()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        with self.log_path.open("ab") as log:
            self._log_mark = log.tell()
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} start: {argv}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.environment(),
                    cwd=self._cwd,
                    start_new_session=True,
                    **_as_user(self.user),
                )
            except FileNotFoundError as exc:
                raise MissingBinary(f"{argv[0]} not found ({self.name})") from exc
        self.started_at = time.monotonic()
        self.pid_path.write_text(f"{self._proc.pid}\n")

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until ``is_ready``; raise ``ServerError`` with the log tail if it
        exits or the timeout passes."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                code = self.returncode
                self._reap()
                raise ServerExited(
                    f"{self.name} exited with code {code} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}",
                    code,
                    self.output_since_start(),
                )
            if self._safe_is_ready():
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.name} not ready after {timeout:.0f} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _safe_is_ready(self) -> bool:
        try:
            return self.is_ready()
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group (the process and anything it forked)."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the process to exit by itself; its exit
        code, or ``None`` while it still runs."""
        if self._proc is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout)
        return self._proc.poll()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                proc.wait(5)
        return self._reap()

    def _reap(self) -> int | None:
        """Collect the exit status, kill stragglers in the group, forget the PID."""
        proc = self._proc
        if proc is None:
            return None
        code = proc.poll()
        if code is None:
            return None
        # Children the leader left behind (postgres backends, say) still carry its
        # process-group id; the kernel never reuses that id while any of them live.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.pid_path.unlink(missing_ok=True)
        return code

    def output_since_start(self) -> str:
        """What the process logged since its latest start."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_mark)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def note(self, text: str) -> None:
        """Append a line of ours to the process's log (between its own lines)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n".encode())

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the log file, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} alive={self.alive}>"


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that drop root to ``user`` (and only its own group)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class PortedProcess(ManagedProcess):
    """A managed process that listens on one TCP port of the loopback interface.

    ``port`` 0 (or ``None``) lets us choose one with ``ports`` (a ``PortPicker``).
    When the port turns out to be taken, at the check before each spawn or because
    the process exits saying "Address already in use" while starting, a *movable*
    port is exchanged for another one and the process started again, up to
    ``PORT_ATTEMPTS`` ports. A port the caller gave is *pinned*: taken, it is a
    ``PortInUse`` error naming ``purpose``. Once ready, the port is published
    (clients hold URLs with it), so it is pinned from then on, unless the class is
    ``MOVABLE``: its owner re-points the clients itself after a restart.

    ``argv`` and ``ready`` may be functions of the port; subclasses override
    ``command`` and ``is_ready`` instead, reading ``self.port``.
    """

    MOVABLE = False

    def __init__(
        self,
        name: str,
        run_dir: Path,
        argv: Sequence[str] | Callable[[int], Sequence[str]] | None = None,
        *,
        port: int | None = None,
        pinned: bool | None = None,
        purpose: str | None = None,
        ports: PortPicker | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready: Callable[[int], bool] | None = None,
        user: str | None = None,
    ) -> None:
        static = None if callable(argv) else argv
        super().__init__(name, run_dir, static, env=env, cwd=cwd, user=user)
        self._argv_for = argv if callable(argv) else None
        self._ready_on = ready
        self.ports = ports or default_picker()
        self.port = port or self.ports.pick()
        self.pinned = bool(port) if pinned is None else pinned
        self.purpose = purpose or name
        self._moves = 0

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, for URLs."""
        return f"{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        if self._argv_for is not None:
            return list(self._argv_for(self.port))
        return super().command()

    def is_ready(self) -> bool:
        if self._ready_on is not None:
            return self._ready_on(self.port)
        return super().is_ready()

    def start(self) -> None:
        self._moves = 0
        super().start()

    def prepare(self) -> None:
        """Before each spawn: make sure the port is still ours to take."""
        if not port_is_free(self.port):
            self._move(f"port {self.port} is taken")

    def _move(self, why: str) -> None:
        if self.pinned:
            raise _in_use(self.port, self.purpose)
        if self._moves + 1 >= PORT_ATTEMPTS:
            raise PortInUse(
                f"{PORT_ATTEMPTS} ports in a row were taken (wanted for {self.purpose}); "
                f"last: {why}"
            )
        self._moves += 1
        was, self.port = self.port, self.ports.pick()
        self.note(f"{why}: moving from port {was} to {self.port}")

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                super().wait_ready(max(deadline - time.monotonic(), 0.0))
                break
            except ServerExited as exc:
                # Someone bound the port between our check and the process's bind().
                if not _ADDRESS_IN_USE.search(exc.output):
                    raise
                self._move(f"port {self.port} was taken while {self.name} started")
                ManagedProcess.start(self)  # not self.start(): the attempts go on counting
        if not self.MOVABLE:
            self.pinned = True


# -- Redis ---------------------------------------------------------------------------


#: How a Redis keeps its data: ``off`` (memory only: a restart starts empty), or an
#: append-only file fsynced every second or on every write.
PERSISTENCE = ("off", "everysec", "always")


class RedisServer(PortedProcess):
    """``redis-server`` on loopback in ``run_dir``, by default with an append-only
    file fsynced every second (``persistence``: off, everysec or always).

    Restartable on the same port and folder: the append-only file is replayed. Redis
    writes it before it answers a write, so a ``kill -9`` of the process loses no
    acknowledged write in either AOF mode; the fsync policy only matters when the
    machine itself goes down (everysec may then lose the last second).
    """

    def __init__(
        self,
        run_dir: Path,
        port: int | None = None,
        name: str = "redis",
        *,
        ports: PortPicker | None = None,
        persistence: str = "everysec",
    ) -> None:
        if persistence not in PERSISTENCE:
            raise ValueError(f"Redis persistence {persistence!r}: one of {', '.join(PERSISTENCE)}")
        self.binary = find_binary("redis-server", "redis-server")
        self.persistence = persistence
        super().__init__(name, run_dir, port=port, ports=ports)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def config_path(self) -> Path:
        return self.run_dir / f"{self.name}.conf"

    def prepare(self) -> None:
        super().prepare()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())

    def config(self) -> str:
        """The generated ``redis.conf``: loopback only, the chosen AOF policy, no RDB."""
        aof = (
            ["appendonly no"]
            if self.persistence == "off"
            else ["appendonly yes", f"appendfsync {self.persistence}"]
        )
        return "\n".join(
            [
                "# generated by statelab; edits are overwritten on the next start",
                f"bind {LOOPBACK}",
                "protected-mode yes",
                f"port {self.port}",
                f'dir "{self.run_dir}"',
                "daemonize no",
                'logfile ""',
                *aof,
                f'appenddirname "{self.name}-aof"',
                'save ""',
                "",
            ]
        )

    def command(self) -> list[str]:
        return [self.binary, str(self.config_path)]

    def is_ready(self) -> bool:
        # A raw PING keeps this module free of client libraries; "-LOADING" while the
        # AOF is replayed means not ready yet.
        with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")


# -- PostgreSQL ----------------------------------------------------------------------

_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MAX_UNIX_PATH = 108  # sizeof(sockaddr_un.sun_path) on Linux


def postgres_bindir() -> Path:
    """Folder of ``initdb``/``postgres`` (not on PATH on Debian)."""
    candidates: list[Path] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=10
        )
        candidates.append(Path(out.stdout.strip()))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    for folder in candidates:
        if os.access(folder / "initdb", os.X_OK):
            return folder
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise MissingBinary("initdb not found: install PostgreSQL with `apt-get install postgresql`")


class PostgresServer(PortedProcess):
    """A throwaway PostgreSQL cluster (``initdb`` + ``postgres``) on loopback.

    Trust authentication on 127.0.0.1 only; the superuser role and database are both
    ``statelab``. PostgreSQL refuses to run as root, so when we are root every
    server-side binary runs as the ``postgres`` system user, which owns the data.
    ``fsync=False`` trades durability for speed: for tests only.
    """

    ROLE = "statelab"

    def __init__(
        self,
        run_dir: Path,
        port: int | None = None,
        *,
        fsync: bool = True,
        name: str = "postgres",
        ports: PortPicker | None = None,
    ) -> None:
        user = "postgres" if os.geteuid() == 0 else None
        super().__init__(name, run_dir, port=port, ports=ports, user=user)
        self.fsync = fsync
        self.bindir = postgres_bindir()
        self._scratch: Path | None = None  # our own temp folder, when run_dir is unusable
        self.root = self._choose_root()
        self._cwd = self.root

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def url(self) -> str:
        return self.database_url(self.ROLE)

    def database_url(self, database: str) -> str:
        return f"postgresql://{self.ROLE}@{LOOPBACK}:{self.port}/{database}"

    def _choose_root(self) -> Path:
        wanted = self.run_dir / self.name
        if self.user is None or _traversable_by(wanted.parent, self.user):
            return wanted
        # A root-only folder (pytest's 0700 base, say) cannot be entered by the postgres
        # user; rather than loosen permissions we do not own, use a private temp folder
        # and remove it on stop.
        self._scratch = Path(tempfile.mkdtemp(prefix=f"statelab-{self.name}-"))
        self._scratch.chmod(0o755)
        return self._scratch

    def _bin(self, name: str) -> str:
        return str(self.bindir / name)

    def _run(self, argv: list[str], *, as_server: bool = True, timeout: float = 60) -> str:
        """Run a PostgreSQL tool to completion; raise ``ServerError`` with its output."""
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env=self._tool_env(),
            check=False,
            **(_as_user(self.user) if as_server else {}),
        )
        if proc.returncode != 0:
            raise ServerError(f"{Path(argv[0]).name} failed ({proc.returncode}): {proc.stderr}")
        return str(proc.stdout)

    def _tool_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "HOME": str(self.root),
        }

    def prepare(self) -> None:
        super().prepare()
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self.socket_dir.chmod(0o700)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.root, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _initdb(self) -> None:
        self._run(
            [
                self._bin("initdb"),
                "-D", str(self.data_dir),
                "-U", self.ROLE,
                "--auth=trust",
                "--no-locale",
                "-E", "UTF8",
                "--no-sync",
            ]
        )  # fmt: skip
        hba = self.data_dir / "pg_hba.conf"
        # Trust is fine only because the server listens on loopback and the socket
        # lives in a folder only the server user can enter.
        hba.write_text(
            f"# generated by statelab\nlocal all all trust\nhost all all {LOOPBACK}/32 trust\n"
        )
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(hba, entry.pw_uid, entry.pw_gid)

    def command(self) -> list[str]:
        # A unix socket path longer than the kernel allows stops postgres from
        # starting; we only use TCP, so then go without one.
        sockets = str(self.socket_dir)
        if len(f"{sockets}/.s.PGSQL.{self.port}.lock") >= _MAX_UNIX_PATH:
            sockets = ""
        settings = {
            "listen_addresses": LOOPBACK,
            "port": str(self.port),
            "unix_socket_directories": sockets,
            "max_connections": "300",
            "shared_buffers": "64MB",
            "logging_collector": "off",
        }
        if not self.fsync:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        argv = [self._bin("postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def environment(self) -> dict[str, str]:
        return self._tool_env()

    def is_ready(self) -> bool:
        probe = subprocess.run(
            [self._bin("pg_isready"), "-q", "-h", LOOPBACK, "-p", str(self.port), "-U", self.ROLE,
             "-d", "postgres"],
            capture_output=True,
            timeout=5,
            check=False,
        )  # fmt: skip
        return probe.returncode == 0

    def wait_ready(self, timeout: float = 30.0) -> None:
        super().wait_ready(timeout)
        self.create_database(self.ROLE, exist_ok=True)

    def create_database(self, name: str, *, exist_ok: bool = False) -> str:
        """Create database ``name`` (owned by the ``statelab`` role); returns its URL."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r}: lowercase letters, digits and _ only")
        argv = [self._bin("createdb"), "-h", LOOPBACK, "-p", str(self.port), "-U", self.ROLE, name]
        try:
            self._run(argv, as_server=False)
        except ServerError as exc:
            if not (exist_ok and "already exists" in str(exc)):
                raise
        return self.database_url(name)

    def stop(self, timeout: float = 10.0) -> int | None:
        """``pg_ctl stop -m fast`` (rolls back open transactions), then the PID."""
        if self.alive:
            with contextlib.suppress(ServerError, subprocess.TimeoutExpired):
                self._run(
                    [self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w",
                     "-t", str(int(timeout))],
                    timeout=timeout + 5,
                )  # fmt: skip
        code = super().stop(timeout)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        return code


def _traversable_by(path: Path, user: str) -> bool:
    """Whether ``user`` can reach ``path`` (every existing ancestor searchable)."""
    entry = pwd.getpwnam(user)
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    probe = path.resolve()
    for folder in [probe, *probe.parents]:
        try:
            info = folder.stat()
        except FileNotFoundError:
            continue  # will be created by us, with default permissions
        if info.st_uid == entry.pw_uid:
            ok = bool(info.st_mode & stat.S_IXUSR)
        elif info.st_gid in groups:
            ok = bool(info.st_mode & stat.S_IXGRP)
        else:
            ok = bool(info.st_mode & stat.S_IXOTH)
        if not ok:
            return False
    return True
