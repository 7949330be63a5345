"""Where Redis is: the URL forms statelab accepts, parsed in one place.

- ``redis://[[user]:password@]host[:port][/db]`` — one server;
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/PRIMARY_NAME[/db]`` —
  the sentinels to ask where the primary named ``PRIMARY_NAME`` is now; the clients
  ask again after a failover;
- ``redis+cluster://[[user]:password@]host:port[,host:port...]`` — some nodes of a
  Redis Cluster, from which the clients learn the rest (a cluster has only db 0).

The credentials are those of the Redis servers; sentinels are asked without them
(Sentinel's own password is a separate setting nobody here uses). TLS (``rediss``) is
not offered: every Redis statelab talks to is on loopback or inside a cluster network.

Parsing only, no client library: the settings validate a URL with it and the state
layer builds its clients from the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

Kind = Literal["single", "sentinel", "cluster"]

_SCHEMES: dict[str, Kind] = {
    "redis": "single",
    "redis+sentinel": "sentinel",
    "redis+cluster": "cluster",
}

#: What the error messages show as the accepted forms.
FORMS = (
    "redis://[:password@]host:port[/db], "
    "redis+sentinel://host:port[,host:port...]/PRIMARY_NAME[/db] or "
    "redis+cluster://host:port[,host:port...]"
)

DEFAULT_PORTS: dict[Kind, int] = {"single": 6379, "sentinel": 26379, "cluster": 6379}


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """A parsed Redis URL: which kind of deployment, and how to reach it."""

    kind: Kind
    nodes: tuple[tuple[str, int], ...]  # the server, the sentinels, or cluster seeds
    primary: str | None = None  # the sentinels' name for the primary
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_redis_url(url: str) -> RedisAddress:
    """``url`` parsed; ``ValueError`` says what is wrong in it."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(f"Redis URL {redacted(url)!r}: expected {FORMS}")
    kind = _SCHEMES[scheme.lower()]
    netloc, _, path = rest.partition("/")
    path, _, _query = path.partition("?")
    credentials, at, hosts = netloc.rpartition("@")
    username, password = _credentials(credentials) if at else (None, None)
    nodes = tuple(_node(h, DEFAULT_PORTS[kind], url) for h in hosts.split(","))
    if kind == "single" and len(nodes) > 1:
        raise ValueError(f"Redis URL {redacted(url)!r}: one host only (or use redis+sentinel://)")
    parts = [p for p in path.split("/") if p]
    primary = None
    if kind == "sentinel":
        if not parts:
            raise ValueError(f"Redis URL {redacted(url)!r}: name the primary (.../PRIMARY_NAME)")
        primary, parts = unquote(parts[0]), parts[1:]
    db = _db(parts, url)
    if kind == "cluster" and db:
        raise ValueError(f"Redis URL {redacted(url)!r}: a Redis Cluster has only database 0")
    return RedisAddress(kind, nodes, primary, db, username, password)


def _credentials(text: str) -> tuple[str | None, str | None]:
    user, colon, password = text.partition(":")
    if not colon:  # redis://secret@host: a lone value is the password, as redis-py reads it
        return None, unquote(user) or None
    return unquote(user) or None, unquote(password)


def _node(text: str, default_port: int, url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(f"//{text}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host:
        raise ValueError(f"Redis URL {redacted(url)!r}: {text!r} is not host[:port]")
    return host, port or default_port


def _db(parts: list[str], url: str) -> int:
    if not parts:
        return 0
    if len(parts) > 1 or not parts[0].isdigit():
        raise ValueError(f"Redis URL {redacted(url)!r}: the database is a number (.../0)")
    return int(parts[0])


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = credentials.partition(":")
    return f"{scheme}{sep}{f'{user}:***' if colon else '***'}@{hosts}{slash}{path}"
