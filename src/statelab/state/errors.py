"""Turning driver failures into the shop's ``Unavailable``, in one place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError

from statelab.domain.errors import Unavailable

_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)


@contextmanager
def store_guard(store: str) -> Iterator[None]:
    """Raise ``Unavailable`` (503) when the store behind a placement cannot be reached."""
    try:
        yield
    except _REDIS_DOWN as exc:
        raise Unavailable(f"{store} is unreachable: {exc.__class__.__name__}") from exc
    except OperationalError as exc:
        raise Unavailable(f"{store} is unavailable: {exc.orig.__class__.__name__}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable(f"{store} connection was lost") from exc
        raise
