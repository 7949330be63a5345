"""The generated HAProxy config, its runtime API, and how replica states are read."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from statelab.cluster.haproxy import (
    HAProxyServer,
    LoadBalancerConfig,
    RuntimeAPI,
    ServerStat,
    render_config,
    runtime_socket_path,
)
from statelab.cluster.members import Replica, replica_state
from statelab.cluster.servers import PortedProcess, PortInUse, find_binary
from tests.support import answers_ok, listening


def config(tmp_path: Path, sticky: bool, **servers: int) -> LoadBalancerConfig:
    """Port 0: the HAProxyServer started with it picks its own."""
    return LoadBalancerConfig(
        port=0, socket_path=tmp_path / "h.sock", sticky=sticky, servers=servers, slots=4
    )


@pytest.mark.parametrize("sticky", [False, True])
def test_the_generated_config_is_valid(tmp_path: Path, sticky: bool) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(render_config(replace(config(tmp_path, sticky, r1=8001, r2=8002), port=8000)))
    check = subprocess.run(
        [find_binary("haproxy", "haproxy"), "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_sticky_only_for_the_stateful_shape(tmp_path: Path) -> None:
    sticky = render_config(config(tmp_path, True, r1=8001))
    plain = render_config(config(tmp_path, False, r1=8001))
    assert "cookie SERVERID insert indirect nocache" in sticky
    assert "server r1 127.0.0.1:8001 cookie r1" in sticky
    assert "cookie" not in plain.replace("# ", "")
    for text in (sticky, plain):
        assert "balance roundrobin" in text
        assert "http-check send meth GET uri /readyz" in text
        assert "inter 500ms" in text and "fall 2 rise 2" in text
        assert "http-request disable-l7-retry if !idempotent !has_idempotency_key" in text
        assert "timeout tunnel" in text and "option forwardfor" in text
        assert "option http-buffer-request" in text
        assert "server r4 127.0.0.1:9" in text and text.count(" disabled") == 3


def test_replica_ids_must_fit_the_slots(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="r9"):
        render_config(config(tmp_path, False, r9=8009))


def test_a_slot_is_filled_at_runtime_and_takes_traffic(tmp_path: Path, closed_port: int) -> None:
    backend = PortedProcess(
        "backend",
        tmp_path,
        lambda port: ["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        ready=lambda port: answers_ok(f"http://127.0.0.1:{port}/readyz"),
    )
    # The check asks for /readyz: give the static file server one.
    (tmp_path / "readyz").write_text("ok")
    cfg = config(tmp_path, True, r1=closed_port)  # r1 points at nothing: DOWN
    with backend, HAProxyServer(tmp_path, cfg) as lb:
        api = RuntimeAPI(cfg.socket_path)
        assert api.show_stat()["r2"].status == "MAINT"
        api.set_address("r2", backend.port)
        api.set_state("r2", "ready")
        deadline = time.monotonic() + 5
        while api.show_stat()["r2"].status != "UP":
            assert time.monotonic() < deadline, api.show_stat()
            time.sleep(0.05)
        r = httpx.get(lb.url + "/readyz")
        assert r.status_code == 200
        assert "SERVERID=r2" in r.headers["set-cookie"]
        api.set_state("r2", "drain")
        assert api.show_stat()["r2"].admin == "drain"


def test_with_no_replica_up_haproxy_answers_a_problem_with_retry_after(
    tmp_path: Path, closed_port: int
) -> None:
    cfg = config(tmp_path, False, r1=closed_port)  # r1 points at nothing: DOWN
    with HAProxyServer(tmp_path, cfg) as lb:
        deadline = time.monotonic() + 5
        while RuntimeAPI(cfg.socket_path).show_stat()["r1"].status.startswith("UP"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = httpx.get(lb.url + "/api/cart")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["retry-after"] == "1"
    assert r.json()["status"] == 503 and r.json()["title"] == "Service unavailable"


def stat(status: str, sessions: int = 0) -> ServerStat:
    return ServerStat(
        name="r1",
        status=status,
        sessions=sessions,
        total=0,
        requests=0,
        check_status="",
        last_change_s=0,
        failed_checks=0,
        retries=0,
        redispatches=0,
    )


class FakeReplica(Replica):
    def __init__(self, alive: bool, seen_up: bool) -> None:
        super().__init__("r1", Path("/nonexistent"), ["true"], {})
        self._alive = alive
        self.seen_up = seen_up

    @property
    def alive(self) -> bool:
        return self._alive


@pytest.mark.parametrize(
    ("status", "alive", "seen_up", "expected"),
    [
        ("UP", True, True, "up"),
        ("UP 1/2", False, True, "up"),  # killed, HAProxy has not noticed yet
        ("DOWN", False, True, "down"),
        ("DOWN", True, False, "starting"),
        ("DOWN 1/2", True, False, "starting"),
        ("DOWN", True, True, "down"),  # alive but failing its checks
        ("DRAIN", True, True, "draining"),
        ("MAINT", True, True, "down"),
    ],
)
def test_replica_state_is_haproxys_view(
    status: str, alive: bool, seen_up: bool, expected: str
) -> None:
    assert replica_state(FakeReplica(alive, seen_up), stat(status)) == expected


class _Backend(socketserver.ThreadingTCPServer):
    """A tiny HTTP server; ``swallow`` ones close /work requests without answering,
    like a replica killed while handling them."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, swallow: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.swallow = swallow
        self.hits = 0
        self.port: int = self.server_address[1]


class _Handler(socketserver.StreamRequestHandler):
    server: _Backend

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):  # health checks hang up with RST
            self._serve()

    def _serve(self) -> None:
        while line := self.rfile.readline():
            path = line.split()[1].decode()
            length = 0
            while (header := self.rfile.readline()) not in (b"\r\n", b""):
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":")[1])
            self.rfile.read(length)
            if path == "/work":
                self.server.hits += 1
                if self.server.swallow:
                    return  # close without a response
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def test_only_idempotent_requests_are_replayed(tmp_path: Path) -> None:
    dying, healthy = _Backend(swallow=True), _Backend(swallow=False)
    for backend in (dying, healthy):
        threading.Thread(target=backend.serve_forever, daemon=True).start()
    cfg = config(tmp_path, False, r1=dying.port, r2=healthy.port)
    try:
        with HAProxyServer(tmp_path, cfg) as lb:
            deadline = time.monotonic() + 5
            while any(s.status != "UP" for n, s in lb.api.show_stat().items() if n in "r1 r2"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            plain = [httpx.post(lb.url + "/work", content=b"x") for _ in range(6)]
            failed = sum(r.status_code != 200 for r in plain)
            # Each POST that reached the dying replica failed and was not sent again.
            assert failed == dying.hits > 0
            assert dying.hits + healthy.hits == 6
            dying.hits = healthy.hits = 0
            keyed = [
                httpx.post(lb.url + "/work", content=b"x", headers={"Idempotency-Key": f"k{i}"})
                for i in range(6)
            ]
            reads = [httpx.get(lb.url + "/work") for _ in range(6)]
            # With a key (or a GET) the lost attempts were replayed on the other replica.
            assert all(r.status_code == 200 for r in keyed + reads)
            assert dying.hits > 0 and healthy.hits == 12
    finally:
        for backend in (dying, healthy):
            backend.shutdown()
            backend.server_close()


def test_a_deep_run_folder_gets_a_short_private_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    socket_path = runtime_socket_path(deep)
    assert socket_path.parent != deep and len(str(socket_path)) <= 97
    assert socket_path.parent.stat().st_mode & 0o777 == 0o700
    cfg = LoadBalancerConfig(port=0, socket_path=socket_path, sticky=False, servers={"r1": 9})
    with HAProxyServer(deep, cfg) as lb:
        assert "r1" in lb.api.show_stat()
    assert not socket_path.parent.exists()
    assert runtime_socket_path(tmp_path) == tmp_path / "haproxy.sock"


def test_haproxy_moves_off_a_port_taken_before_it_starts(tmp_path: Path, closed_port: int) -> None:
    lb = HAProxyServer(tmp_path, config(tmp_path, False, r1=closed_port))
    taken = lb.port
    with listening(taken), lb:
        assert lb.port != taken
        assert f"bind 127.0.0.1:{lb.port}\n" in lb.config_path.read_text()
        assert httpx.get(lb.url + "/").status_code == 503  # HAProxy answers: no replica is up


class _Outrun(HAProxyServer):
    """HAProxy whose port another listener binds after our check, before HAProxy does."""

    intruder: socket.socket | None = None

    def prepare(self) -> None:
        super().prepare()
        if self.intruder is None:
            self.intruder = socket.create_server(("127.0.0.1", self.port))


def test_haproxy_moves_off_a_port_taken_while_it_starts(tmp_path: Path) -> None:
    lb = _Outrun(tmp_path, config(tmp_path, False, r1=9))
    try:
        with lb:
            assert lb.intruder is not None
            taken = lb.intruder.getsockname()[1]
            assert lb.port != taken
            assert httpx.get(lb.url + "/").status_code == 503
        log = lb.log_path.read_text()
        assert "cannot bind socket (Address already in use)" in log
        assert f"port {taken} was taken while haproxy started" in log
    finally:
        if lb.intruder is not None:
            lb.intruder.close()


def test_a_given_port_is_never_moved(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        lb = HAProxyServer(tmp_path, replace(config(tmp_path, False), port=port))
        with pytest.raises(PortInUse, match=rf"port {port} .* \(wanted for the load balancer\)"):
            lb.start()
    assert not lb.alive and lb.port == port
