"""Real Redis topologies for the tests: a primary with replicas and sentinels, and a
Redis Cluster of three primaries with a replica each, started by the same harness
``statelab up --redis sentinel|cluster`` uses (``statelab.cluster.redis``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from statelab.cluster.redis import ClusterRedis, SentinelRedis


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelRedis]:
    """A primary + 2 replicas + 3 sentinels for the tests of a module that leave every
    process running (which node is the primary may change)."""
    topology = SentinelRedis(tmp_path_factory.mktemp("sentinel"), "everysec")
    topology.start()
    yield topology
    topology.stop()


@pytest.fixture
def own_sentinel(tmp_path: Path) -> Iterator[SentinelRedis]:
    """A primary + 2 replicas + 3 sentinels of this test's own (it may kill some)."""
    topology = SentinelRedis(tmp_path / "sentinel", "everysec")
    topology.start()
    yield topology
    topology.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterRedis]:
    """One Redis Cluster for the tests of a module that leave its nodes running."""
    topology = ClusterRedis(tmp_path_factory.mktemp("cluster"), "off")
    topology.start()
    yield topology
    topology.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterRedis]:
    """A Redis Cluster of this test's own (it may kill a primary)."""
    topology = ClusterRedis(tmp_path / "cluster", "off")
    topology.start()
    yield topology
    topology.stop()
