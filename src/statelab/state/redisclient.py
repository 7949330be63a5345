"""redis-py clients for the work ``RedisLink`` does not do: pub/sub, blocking
commands and the job queue, for any URL of ``statelab.redisurl``.

- one server: ``redis.asyncio.Redis``;
- Sentinel: a ``Redis`` whose pool asks the sentinels for the primary on every new
  connection and checks its role, so after a failover it reconnects to the new one;
- Cluster: ``redis.asyncio.RedisCluster``, which follows ``MOVED``/``ASK`` and reads
  the slot map again when a node fails. Pub/sub on a cluster uses plain channels,
  which Redis Cluster delivers on every node.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode, ClusterPubSub
from redis.asyncio.sentinel import Sentinel

from statelab.redisurl import RedisAddress, parse_redis_url

#: Either client: they answer the same commands (``pubsub``, ``pipeline``,
#: ``register_script``, ...) for what statelab does with them.
RedisClient = Redis | RedisCluster


def redis_client(url: str, **options: Any) -> RedisClient:
    """A redis-py asyncio client for ``url``; ``options`` go to every connection
    (``decode_responses``, ``socket_timeout``, ``protocol``, ...)."""
    return client_for(parse_redis_url(url), **options)


def client_for(address: RedisAddress, **options: Any) -> RedisClient:
    credentials: dict[str, Any] = {"username": address.username, "password": address.password}
    if address.kind == "cluster":
        # A pool per node: ``max_connections`` is the cluster client's own name for it.
        options.pop("health_check_interval", None)
        nodes = [ClusterNode(host, port) for host, port in address.nodes]
        return _Cluster(startup_nodes=nodes, **credentials, **options)
    if address.kind == "sentinel":
        assert address.primary is not None
        timeout = options.get("socket_connect_timeout", 1.0)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(address.nodes),
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
        )
        primary: _SentinelPrimary = sentinel.master_for(
            address.primary, redis_class=_SentinelPrimary, db=address.db, **credentials, **options
        )
        primary.sentinels_of = sentinel
        return primary
    host, port = address.nodes[0]
    return Redis(host=host, port=port, db=address.db, **credentials, **options)


class _SentinelPrimary(Redis):
    """The primary's client, which also closes its connections to the sentinels."""

    sentinels_of: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels_of is not None:
            for client in self.sentinels_of.sentinels:
                await client.aclose()


class _Cluster(RedisCluster):
    """A cluster client whose pub/sub first learns the slot map: redis-py's picks a
    node by the first channel's slot and fails (KeyError) on a client that has sent
    nothing yet. (Its PING already moves on from a dead default node.)"""

    def pubsub(
        self, node: Any = None, host: str | None = None, port: int | None = None, **kwargs: Any
    ) -> ClusterPubSub:
        return _ClusterPubSub(self, node=node, host=host, port=port, **kwargs)


class _ClusterPubSub(ClusterPubSub):
    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.cluster.initialize()  # once; later calls return at once
        return await super().execute_command(*args, **kwargs)
