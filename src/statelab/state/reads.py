"""Reads of several stores in one round trip.

A request of the shop reads up to three stores before it answers: who is calling
(the session), their cart and the menu. Awaited one after the other, each read on
Redis is a round trip of its own, and each round trip costs the replica more CPU
(the request suspended and resumed, one more turn of the event loop) than the
command itself. So a store describes a read as a ``Read``: the commands it sends to
the request path's Redis (``RedisLink``) and how to make its answer from their
replies. ``read_together`` sends the commands of several reads in one pipeline, then
hands each read its own replies.

A read that needs no Redis (a memory placement, a signed cookie, SQL) has no
commands: its answer is made from nothing, by the store itself. An answer may
follow up with more work (renew a session's idle timeout, load a missing menu):
that is why answers are awaited.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from statelab.state.errors import store_guard
from statelab.state.redislink import Command, RedisLink

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Read(Generic[T]):
    """A read of one store: ``commands`` for Redis (none for a store elsewhere) and
    ``answer``, which gets their replies, in order."""

    commands: Sequence[Command]
    answer: Callable[[list[Any]], Awaitable[T]]


def local(answer: Callable[[], Awaitable[T]]) -> Read[T]:
    """A read that sends Redis nothing: its answer is ``answer()``."""

    async def answered(_: list[Any]) -> T:
        return await answer()

    return Read((), answered)


async def _replies(link: RedisLink | None, reads: Sequence[Read[Any]]) -> list[list[Any]]:
    commands = [command for read in reads for command in read.commands]
    if not commands:
        return [[] for _ in reads]
    assert link is not None  # a store that sends commands was given the link
    with store_guard("redis"):
        flat = await link.batch(commands)
    split, start = [], 0
    for read in reads:
        split.append(flat[start : start + len(read.commands)])
        start += len(read.commands)
    return split


@overload
async def read_together(
    link: RedisLink | None, first: Read[A], second: Read[B], /
) -> tuple[A, B]: ...


@overload
async def read_together(
    link: RedisLink | None, first: Read[A], second: Read[B], third: Read[C], /
) -> tuple[A, B, C]: ...


async def read_together(link: RedisLink | None, *reads: Read[Any]) -> tuple[Any, ...]:
    """The answers of reads whose Redis commands went out in one pipeline."""
    replies = await _replies(link, reads)
    return tuple([await read.answer(mine) for read, mine in zip(reads, replies, strict=True)])


async def read_one(link: RedisLink | None, read: Read[T]) -> T:
    """The answer of one read (its commands in one round trip)."""
    (replies,) = await _replies(link, (read,))
    return await read.answer(replies)
