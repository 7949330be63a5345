"""Real server processes owned by us: started in a run folder, stopped by PID.

``ManagedProcess`` is the one way statelab runs a binary: in its own session (so
a signal meant for it never reaches our terminal, and its children die with it),
stdout and stderr appended to ``<run_dir>/logs/<name>.log``, its PID written to
``<run_dir>/pids/<name>.pid``. ``RedisServer`` and ``PostgresServer`` build on it.

Exceptions::

    ServerError            a process failed to start, died, or did not get ready
    ├── MissingBinary      the executable is not installed (names the Debian package)
    └── PortInUse          the port we were told to use is taken
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "ManagedProcess",
    "MissingBinary",
    "PortInUse",
    "PostgresServer",
    "RedisServer",
    "ServerError",
    "find_binary",
    "free_port",
    "port_is_free",
]

LOOPBACK = "127.0.0.1"


class ServerError(RuntimeError):
    """A managed process could not be started, died, or never got ready."""


class MissingBinary(ServerError):
    """An executable we need is not installed."""


class PortInUse(ServerError):
    """The requested port is already bound by someone else."""


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


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
        raise PortInUse(f"port {port} on {LOOPBACK} is already in use (wanted for {what})")


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
                raise ServerError(
                    f"{self.name} exited with code {code} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
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


# -- Redis ---------------------------------------------------------------------------


class RedisServer(ManagedProcess):
    """``redis-server`` on loopback with AOF (``appendfsync everysec``) in ``run_dir``.

    Restartable on the same port and folder: the append-only file is replayed, so a
    clean stop loses nothing and a ``kill -9`` loses at most about a second of writes.
    """

    def __init__(self, run_dir: Path, port: int | None = None, name: str = "redis") -> None:
        super().__init__(name, run_dir)
        self.port = port or free_port()
        self.binary = find_binary("redis-server", "redis-server")

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def config_path(self) -> Path:
        return self.run_dir / f"{self.name}.conf"

    def prepare(self) -> None:
        require_free_port(self.port, self.name)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())

    def config(self) -> str:
        """The generated ``redis.conf``: loopback only, AOF every second, no RDB."""
        return "\n".join(
            [
                "# generated by statelab; edits are overwritten on the next start",
                f"bind {LOOPBACK}",
                "protected-mode yes",
                f"port {self.port}",
                f'dir "{self.run_dir}"',
                "daemonize no",
                'logfile ""',
                "appendonly yes",
                "appendfsync everysec",
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


class PostgresServer(ManagedProcess):
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
    ) -> None:
        user = "postgres" if os.geteuid() == 0 else None
        super().__init__(name, run_dir, user=user)
        self.port = port or free_port()
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
        require_free_port(self.port, self.name)
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
