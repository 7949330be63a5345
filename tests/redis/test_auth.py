"""Password-protected Redis behind Sentinel and in a Cluster: the credentials of the
URL reach every server the clients find (a promoted primary, each cluster node), and
a wrong password is refused at connection time, a 503, not a half-open link."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError, RedisClusterException

from statelab.cluster.redis import ClusterRedis, RedisTopology, SentinelRedis
from statelab.domain.errors import Unavailable
from statelab.state.errors import store_guard
from statelab.state.redisclient import redis_client
from statelab.state.redislink import RedisLink

PASSWORD = "s3cret-for-tests"


def with_password(url: str, password: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://:{password}@{rest}"


@pytest.fixture(params=["sentinel", "cluster"], scope="module")
def protected(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisTopology]:
    folder = Path(tmp_path_factory.mktemp(request.param))
    topology: RedisTopology = (
        SentinelRedis(folder, "off", password=PASSWORD)
        if request.param == "sentinel"
        else ClusterRedis(folder, "off", password=PASSWORD)
    )
    topology.start()
    yield topology
    topology.stop()


async def test_the_url_s_password_reaches_every_server(protected: RedisTopology) -> None:
    link = RedisLink.from_url(with_password(protected.url, PASSWORD))
    client = redis_client(with_password(protected.url, PASSWORD), decode_responses=True)
    try:
        keys = [f"k{i}" for i in range(30)]  # on every primary of a cluster
        await link.batch([("SET", k, k) for k in keys])
        assert await link.batch([("GET", k) for k in keys]) == keys
        assert [await client.get(k) for k in keys] == keys
    finally:
        await link.aclose()
        await client.aclose()


async def test_a_wrong_password_is_refused(protected: RedisTopology) -> None:
    link = RedisLink.from_url(with_password(protected.url, "wrong"))
    client = redis_client(with_password(protected.url, "wrong"), decode_responses=True)
    try:
        with pytest.raises(Unavailable), store_guard("redis"):
            await link.call("SET", "k", "v")
        with pytest.raises((AuthenticationError, RedisClusterException), match="password"):
            await client.set("k", "v")
    finally:
        await link.aclose()
        await client.aclose()
