"""Group commit: the writes that arrive together go to the database in one transaction.

A store hands each write to ``GroupCommit.submit`` and awaits its own result. The
first write to arrive while nothing is being committed starts a commit after one
event-loop turn, so every write that arrived in that same turn joins it; writes that
arrive while a commit is running wait for it to end and then go together in the next
one. No timer is involved: under light load a write is committed at once, alone;
under heavy load the batches grow by themselves with the time a commit takes, and
so does throughput, since a transaction costs about the same for one row as for fifty.

One commit runs at a time, in arrival order: a batch's writes are applied in the
order they were submitted and batches follow each other, so two writes from one
caller keep their order. A caller gets its result only after the commit that holds
its write has ended. A caller that stops waiting (its task was cancelled) does not
take its write out: it may be committed all the same, unacknowledged, which is why
the writes batched here must be idempotent to re-send.

``commit`` answers one result per write, in order: a value, or an exception for that
write alone (a rule it broke). An exception raised by ``commit`` itself (the database
is down) fails every write of the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from statelab.domain.errors import Unavailable

#: How long ``close`` lets the queued writes commit before it refuses them.
CLOSE_GRACE = 2.0

Write = TypeVar("Write")
Result = TypeVar("Result")

#: Commits a batch of writes; one result (or the write's own error) per write, in order.
Commit = Callable[[list[Write]], Awaitable[Sequence[Result | Exception]]]


class GroupCommit(Generic[Write, Result]):
    """Collects writes and commits them in batches of at most ``max_batch``."""

    def __init__(self, commit: Commit[Write, Result], max_batch: int = 256) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._queue: list[tuple[Write, asyncio.Future[Result]]] = []
        self._runner: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(self, write: Write) -> Result:
        """Queue ``write``; return its result once the batch holding it is committed."""
        if self._closed:
            raise _closed()
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((write, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="group-commit")
        return await future

    async def close(self) -> None:
        """Commit what is queued (for up to ``CLOSE_GRACE`` seconds), then stop. Writes left
        over fail with ``Unavailable``; one whose commit was cut short fails the same way,
        committed or not (it is idempotent: the caller sends it again)."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is None:
            return
        with contextlib.suppress(TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(runner), CLOSE_GRACE)
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await runner
        self._settle(self._queue, _closed())
        self._queue = []

    async def _run(self) -> None:
        await asyncio.sleep(0)  # one loop turn: the writes that arrived with this one join
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            try:
                results = await self._commit([write for write, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for {len(batch)} writes")
            except Exception as exc:
                self._settle(batch, exc)
            except BaseException:
                self._settle(batch, _closed())  # cancelled by close(): waiters learn it
                raise
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # its caller stopped waiting
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)

    @staticmethod
    def _settle(batch: list[tuple[Write, asyncio.Future[Result]]], exc: Exception) -> None:
        """Fail every still-awaited write of ``batch`` with ``exc``."""
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)


def _closed() -> Unavailable:
    return Unavailable("the store is shutting down; send again")
