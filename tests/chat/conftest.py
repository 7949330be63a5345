"""Chat fixtures: clusters of real replica processes over the session's Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from statelab.cluster.servers import RedisServer
from tests.chat.support import Balancer, Replica, sqlite_database


class Cluster:
    """Replica processes of one deployment (one SQLite file, one Redis)."""

    def __init__(self, run_dir: Path, redis_url: str | None) -> None:
        self.run_dir = run_dir
        self.redis_url = redis_url
        self.database_url = sqlite_database(run_dir / "db")
        self.replicas: list[Replica] = []
        self.balancers: list[Balancer] = []

    def start(self, *ids: str, profile: str = "stateless", **env: str) -> list[Replica]:
        """Start replicas in parallel and wait until each answers ``/readyz``."""
        redis_url = self.redis_url if profile != "stateful" else None
        new = [
            Replica(self.run_dir, rid, profile, self.database_url, redis_url, env) for rid in ids
        ]
        self.replicas += new
        for replica in new:
            replica.start()
        for replica in new:
            replica.wait_ready(30)
        return new

    def balancer(self, replicas: list[Replica]) -> Balancer:
        """HAProxy in front of ``replicas``, ready."""
        lb = Balancer(self.run_dir, replicas)
        self.balancers.append(lb)
        lb.start()
        lb.wait_ready(15)
        return lb

    def stop(self) -> None:
        for process in [*self.balancers, *self.replicas]:
            process.stop(10)


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str) -> Iterator[Cluster]:
    """A fresh deployment over a flushed Redis; replicas are stopped afterwards."""
    deployment = Cluster(tmp_path, redis_url)
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[tuple[Replica, Replica]]:
    """Two stateless replicas shared by a module's tests (each test uses its own users
    and rooms, so Redis is not flushed in between)."""
    deployment = Cluster(tmp_path_factory.mktemp("chat-pair"), redis_server.url)
    try:
        env = {"STATELAB_CHAT_ROOMS_PER_USER": "5", "STATELAB_CHAT_TYPING_TTL_SECONDS": "2"}
        r1, r2 = deployment.start("r1", "r2", **env)
        yield r1, r2
    finally:
        deployment.stop()
