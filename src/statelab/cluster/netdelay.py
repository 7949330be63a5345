"""A TCP proxy that delays what it forwards: network distance on one machine.

This kernel has no ``netem``, so the lab puts this proxy between the replicas and
Redis to measure what a store a fraction of a millisecond away costs. Every chunk
read from one side is written to the other ``delay`` seconds after it arrived,
in order, each way; chunks are queued, not serialised, so the delay does not grow
with the load. Threads and ``time.sleep`` (nanosecond timers) rather than an event
loop, whose timers round to the millisecond.

It runs as a process of its own (``python -m statelab.cluster.netdelay``); the
supervisor changes the delay by writing the new value to ``--delay-file`` and
sending SIGHUP. ``DelayProxy`` is that process as the supervisor manages it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from statelab.cluster.servers import LOOPBACK, PortedProcess

CHUNK = 65536


class _Delay:
    """The current delay in seconds, re-read from a file on SIGHUP."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds = 0.0
        self.reload()

    def reload(self, *_: object) -> None:
        try:
            self.seconds = max(0.0, float(self.path.read_text().strip() or 0) / 1000)
        except (OSError, ValueError):
            self.seconds = 0.0


def _pump(source: socket.socket, sink: socket.socket, delay: _Delay) -> None:
    """Forward ``source`` to ``sink``, each chunk ``delay`` after it arrived."""
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    ready = threading.Condition()
    done = False

    def writer() -> None:
        while True:
            with ready:
                while not queue and not done:
                    ready.wait()
                if not queue:
                    break
                due, data = queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                sink.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        while data := source.recv(CHUNK):
            with ready:
                queue.append((time.monotonic() + delay.seconds, data))
                ready.notify()
    except OSError:
        pass
    with ready:
        done = True
        ready.notify()
    thread.join()


def _serve_one(client: socket.socket, target: tuple[str, int], delay: _Delay) -> None:
    try:
        upstream = socket.create_connection(target, timeout=5)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    for sock in (client, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pump, args=(upstream, client, delay), daemon=True)
    back.start()
    _pump(client, upstream, delay)
    back.join()
    client.close()
    upstream.close()


def serve(port: int, target: tuple[str, int], delay_file: Path) -> None:
    """Accept on ``127.0.0.1:port`` and proxy each connection to ``target``."""
    delay = _Delay(delay_file)
    signal.signal(signal.SIGHUP, delay.reload)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, port))  # "Address already in use" moves us (PortedProcess)
    listener.listen(256)
    print(f"delay proxy 127.0.0.1:{port} -> {target[0]}:{target[1]}", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve_one, args=(client, target, delay), daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m statelab.cluster.netdelay")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--delay-file", type=Path, required=True)
    args = parser.parse_args(argv)
    host, _, target_port = args.target.rpartition(":")
    serve(args.port, (host, int(target_port)), args.delay_file)


class DelayProxy(PortedProcess):
    """The proxy process in front of ``target_port``, managed like any server."""

    def __init__(self, run_dir: Path, target_port: int, name: str = "redis-delay") -> None:
        super().__init__(name, run_dir)
        self.target_port = target_port
        self.delay_file = self.run_dir / f"{name}.ms"
        self.delay_ms = 0.0

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def prepare(self) -> None:
        super().prepare()
        self.delay_file.write_text(f"{self.delay_ms}\n")

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "statelab.cluster.netdelay", "--port", str(self.port),
            "--target", f"{LOOPBACK}:{self.target_port}", "--delay-file", str(self.delay_file),
        ]  # fmt: skip

    def is_ready(self) -> bool:
        with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
            return True

    def set_delay(self, ms: float) -> None:
        """Delay each way by ``ms`` from now on (new and open connections alike)."""
        self.delay_ms = ms
        self.delay_file.write_text(f"{ms}\n")
        self.kill(signal.SIGHUP)


def _ignore(_sig: int, _frame: FrameType | None) -> None:
    """SIGHUP before the handler is installed must not kill the proxy."""


if __name__ == "__main__":
    signal.signal(signal.SIGHUP, _ignore)
    main()
