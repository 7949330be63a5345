"""The replicated ledger (``ledger=replicated``): separate copies kept in sync.

Every replica keeps every balance and order in its own memory (a ``Book``) and
applies, in order, every command of one shared replication log: a Redis Stream
(``keys.ledger_log``), made durable by Redis's append-only file. This is
state-machine replication, not last-writer-wins:

- **Ordering.** A write appends its command (user, operation, amount or cart lines
  and total, the Idempotency-Key and request fingerprint, a random command id) and
  Redis gives it the next stream id: the log's order is the order of appends, the
  same for every reader.
- **Applying.** A task per replica reads the stream from the last entry it applied
  (``XREAD BLOCK``) and applies each entry synchronously to its book, told the
  entry's own time (the stream id's milliseconds). The book's answer — applied or
  refused, the balance after, the order id (the count of paid orders), which keys
  are remembered or expired — depends only on the log up to that entry, so every
  replica computes the same answer for it. A key already applied makes a duplicate
  entry (a retry racing the first attempt, or an append the client library resent)
  a replay; another body with it, a mismatch.
- **Answering.** The writer waits until its own replica has applied its entry,
  found by the command id, and answers that entry's outcome: it reads its own
  writes. Reads (balance, orders) are local and may be behind the log by the apply
  lag on other replicas: the staleness the lab's ``sync-vs-shared`` measures.
- **Orders and receipts.** A paid order is part of the checkout's entry, so every
  copy holds every order under the same id and creation time (the entry's). The
  receipt job attaches a receipt through the log too (a ``receipt`` command): the
  first entry for an order attaches it everywhere, a later one answers False — so
  the job may run twice and attach once. A ``statelab worker`` doing that job keeps
  a copy of its own, replayed like a replica's.
- **Starting.** A replica replays the whole log before it reports ready: ``ready``
  (in ``/readyz``) is false until it has applied every entry that was in the log
  when it started, and its reads and writes wait for that (then 503).

Failure model:

- Redis down: an append fails with ``Unavailable`` (503); reads answer from the
  local copy, as they would while the log is merely slow. Appends go through the
  request path's ``RedisLink``; the log is followed with redis-py, whose blocking
  reads need a connection of their own.
- With ``redis_wait_replicas``, an append must reach that many Redis replicas
  (WAIT) before it counts; if it does not in time, the writer gets a 503 without
  waiting for its copy. The entry may still be in the log (and then applied
  everywhere): a retry with the same key answers it, once.
- A replica killed mid-write: its entry is in the log (applied by everyone, and a
  retry with the same key replays it) or not (the retry appends it).
- A log that lost entries this copy applied (a Redis restarted without
  persistence, or that lost its last second under ``appendfsync everysec``, or a
  failover to a replica that lagged): each entry carries ``prev``, the id of the
  entry before it, written by the appending script in the same atomic step; an
  entry whose ``prev`` is not the last one applied here, or a last-applied entry no
  longer in the log, makes the replica drop its copy and rebuild it from the log.
  The copies then agree with the log — and the lost entries' money is gone, which
  the lab measures (C14).
- Replicas must share ``idempotency_ttl_seconds`` and
  ``max_memory_idempotency_keys``: both decide when a key is forgotten, so both are
  part of the state machine.

The log grows forever: no snapshot and no trimming are implemented, so a starting
replica replays every entry ever appended. Measured on a 2-core machine by
``tests/state/measure_replicated_ledger.py``: 100 000 entries replay in 1.5-2.5 s
(40 000-90 000 a second, as busy as the machine was) and take Redis 121 bytes each
(11.5 MiB). A trimmed log is
refused, not half-replayed: its first entry's ``prev`` is not the beginning, and the
replica stays not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from redis.exceptions import ResponseError

from statelab.domain.errors import StatelabError, Unavailable
from statelab.domain.shop import PricedCart, positive_amount
from statelab.state import keys
from statelab.state.errors import store_guard
from statelab.state.ledger import SWEEP_BATCH, Book, Idempotency, Outcome
from statelab.state.redisclient import RedisClient
from statelab.state.redislink import RedisLink, Script

log = logging.getLogger(__name__)

#: Appends a command with the id of the entry before it, in one atomic step, so a
#: reader can tell a contiguous log from one that lost entries (see the docstring).
APPEND = Script.of("""
local tail = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev = '0-0'
if tail[1] then prev = tail[1][1] end
return redis.call('XADD', KEYS[1], '*', 'prev', prev, 'cmd', ARGV[1])
""")

#: The id before the first entry: where a copy with nothing applied stands.
ORIGIN = "0-0"
#: Entries read per round trip: large batches make a replay fast.
READ_BATCH = 2000
#: How long one XREAD waits for new entries: below the client's 2 s socket timeout,
#: and the idle period after which the copy checks that the log still holds its last
#: entry.
BLOCK_MS = 1000
#: Error replies of a Redis that answers but cannot take an append now: out of
#: memory, or a primary with fewer replicas than ``min-replicas-to-write``. A 503:
#: retrying later can succeed, and nothing was appended. (The link already makes a
#: read-only replica, a cluster or primary that is down, and a loading Redis 503s.)
_CANNOT_APPEND = ("OOM", "NOREPLICAS")

#: Pause before following the log again after Redis failed.
RETRY_SECONDS = 0.5


# ------------------------------------------------------------------------ commands


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    id: str  # random, chosen by the writer: how it finds its entry's outcome


class _Money(_Command):
    user: int
    key: str
    fp: str

    @property
    def idem(self) -> Idempotency:
        return Idempotency(self.key, self.fp)


class TopUp(_Money):
    op: Literal["top_up"] = "top_up"
    amount: int


class Withdraw(_Money):
    op: Literal["withdraw"] = "withdraw"
    amount: int


class Line(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    item_id: int
    name: str
    quantity: int
    price_cents: int


class Checkout(_Money):
    op: Literal["checkout"] = "checkout"
    items: tuple[Line, ...]
    total: int


class Receipt(_Command):
    op: Literal["receipt"] = "receipt"
    order: int
    receipt: str


#: Every command the log holds, told apart by ``op``.
Command = TopUp | Withdraw | Checkout | Receipt
_COMMAND: TypeAdapter[Command] = TypeAdapter(Annotated[Command, Field(discriminator="op")])

#: What applying one entry gave: an outcome, a receipt's "attached?", or the error
#: the writer raises (an Idempotency-Key used with another body).
Result = Outcome | bool | StatelabError


def execute(book: Book, command: Command, at_ms: int) -> Result:
    """Apply one command to a book: the state machine's transition."""
    try:
        match command:
            case TopUp():
                return book.top_up(command.user, command.amount, command.idem, at_ms)
            case Withdraw():
                return book.withdraw(command.user, command.amount, command.idem, at_ms)
            case Checkout():
                items = [line.model_dump() for line in command.items]
                return book.checkout(command.user, items, command.total, command.idem, at_ms)
            case Receipt():
                return book.set_receipt(command.order, command.receipt)
    except StatelabError as exc:
        return exc


# ----------------------------------------------------------------------- stream ids


def _position(entry_id: str) -> tuple[int, int]:
    """A stream id (``<ms>-<seq>``) as a pair that orders like the stream."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class _LogBroken(Exception):
    """The log no longer continues from the entry this copy applied last."""


# --------------------------------------------------------------------------- ledger


class ReplicatedLedger:
    """This replica's copy of the ledger, kept in step with the shared log.

    ``start`` begins following the log (replaying it first); ``close`` stops. Writes
    and reads made before the first replay is done wait for it, at most
    ``wait_seconds`` (then ``Unavailable``); a write waits as long for its own
    entry to be applied here.
    """

    name = "replicated"

    def __init__(
        self,
        redis: RedisClient,  # follows the log: blocking reads need their own connection
        link: RedisLink,  # appends, on the request path's link (and its WAIT, if set)
        key_ttl_seconds: float,
        max_keys: int,
        *,
        wait_seconds: float = 5.0,
    ) -> None:
        self._redis, self._link = redis, link
        self._key = keys.ledger_log()
        self._ttl_ms = int(key_ttl_seconds * 1000)
        self._max_keys = max_keys
        self._wait = wait_seconds
        self._book = Book(self._ttl_ms, max_keys)
        self._last = ORIGIN  # the last entry applied to the book
        self._log_ms = 0  # its time: the log's clock as this copy knows it
        self._replayed = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[Result]] = {}
        self._task: asyncio.Task[None] | None = None
        self.applied = 0  # entries applied since the book was (re)built
        self.rebuilds = 0  # times the copy was dropped because the log lost entries

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Follow the log in the background (from the first entry)."""
        if self._task is None:
            self._task = asyncio.create_task(self._follow_forever(), name="ledger-log")

    async def close(self) -> None:
        """Stop following the log."""
        task, self._task = self._task, None
        if task is None:
            return
        # Cancelled again until it ends: on Python 3.11, asyncio.wait_for (around
        # redis-py's socket writes) swallows a cancellation that arrives as the write
        # completes, and the task would block in its next read.
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=0.1)
        with contextlib.suppress(asyncio.CancelledError):
            task.result()

    @property
    def ready(self) -> bool:
        """Whether this copy has replayed the log it found when it (re)started."""
        return self._replayed.is_set()

    @property
    def position(self) -> str:
        """The stream id of the last entry applied here."""
        return self._last

    # -- reads: the local copy -----------------------------------------------------

    async def balance(self, user_id: int) -> int:
        await self._until_replayed()
        return self._book.balance(user_id)

    async def replay(self, user_id: int, idem: Idempotency) -> Outcome | None:
        await self._until_replayed()
        return self._book.recall(user_id, idem, _now_ms())

    async def orders(self, user_id: int) -> list[dict[str, Any]]:
        await self._until_replayed()
        return self._book.orders(user_id)

    async def order(self, user_id: int, order_id: int) -> dict[str, Any]:
        await self._until_replayed()
        return self._book.order(user_id, order_id)

    async def sweep(self, now_ms: int, batch: int = SWEEP_BATCH) -> int:
        """Nothing to do: keys expire by the log's clock alone, each entry forgetting
        those past the TTL at its own time, alike on every copy. Forgetting by this
        replica's clock could drop a key a later entry (stamped by Redis's clock)
        still finds on the other copies, which would then disagree."""
        return 0

    # -- writes: through the log ---------------------------------------------------

    async def top_up(self, user_id: int, amount: int, idem: Idempotency) -> Outcome:
        positive_amount(amount)
        return await self._money(TopUp(**_money_fields(user_id, idem), amount=amount))

    async def withdraw(self, user_id: int, amount: int, idem: Idempotency) -> Outcome:
        positive_amount(amount)
        return await self._money(Withdraw(**_money_fields(user_id, idem), amount=amount))

    async def checkout(self, user_id: int, cart: PricedCart, idem: Idempotency) -> Outcome:
        lines = tuple(
            Line(item_id=ln.item_id, name=ln.name, quantity=ln.quantity, price_cents=ln.price_cents)
            for ln in cart.lines
        )
        fields = _money_fields(user_id, idem)
        return await self._money(Checkout(**fields, items=lines, total=cart.total_cents))

    async def set_receipt(self, order_id: int, receipt: str) -> bool:
        await self._until_replayed()
        result = await self._commit(Receipt(id=_command_id(), order=order_id, receipt=receipt))
        return bool(result)

    async def _money(self, command: TopUp | Withdraw | Checkout) -> Outcome:
        await self._until_replayed()
        # A key this copy already applied is answered here, without a new entry. The
        # copy may be behind, so a key it does not know may still be in the log: the
        # state machine then replays it.
        known = self._book.recall(command.user, command.idem, _now_ms())
        if known is not None:
            return known
        result = await self._commit(command)
        assert isinstance(result, Outcome)
        return result

    async def _commit(self, command: Command) -> Outcome | bool:
        """Append the command and wait for this copy to apply it; its result."""
        waiter: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting[command.id] = waiter
        try:
            await self._log(command)
            result = await self._applied(waiter)
        finally:
            self._waiting.pop(command.id, None)
        if isinstance(result, StatelabError):
            raise result
        return result

    async def _log(self, command: Command) -> None:
        try:
            with store_guard("redis"):
                await self._link.run(APPEND, [self._key], [command.model_dump_json()])
        except ResponseError as exc:
            if not str(exc).startswith(_CANNOT_APPEND):
                raise
            raise Unavailable(
                "redis cannot take the change now (out of memory, or too few replicas); "
                "nothing was appended"
            ) from exc

    async def _applied(self, waiter: asyncio.Future[Result]) -> Result:
        try:
            async with asyncio.timeout(self._wait):
                return await waiter
        except TimeoutError:
            raise Unavailable(
                f"the change is in the ledger's log but this replica did not apply it within "
                f"{self._wait:g} s; a retry with the same Idempotency-Key answers it once"
            ) from None

    async def _until_replayed(self) -> None:
        if self._replayed.is_set():
            return
        try:
            async with asyncio.timeout(self._wait):
                await self._replayed.wait()
        except TimeoutError:
            raise Unavailable("this replica is still replaying the ledger's log") from None

    # -- following the log -----------------------------------------------------------

    async def _follow_forever(self) -> None:
        while True:
            try:
                await self._follow()
            except _LogBroken as exc:
                if self._last != ORIGIN:
                    log.warning("ledger log lost entries (%s): rebuilding this copy", exc)
                    self._rebuild()
                    continue
                # The log does not start at the beginning (trimmed): no replay of it can
                # be right, so this copy stays not ready.
                log.error("ledger log cannot be replayed: %s", exc)
                await asyncio.sleep(RETRY_SECONDS)
            except Exception:
                log.warning("following the ledger log failed; trying again", exc_info=True)
                await asyncio.sleep(RETRY_SECONDS)

    async def _follow(self) -> None:
        """Apply the log from this copy's position on, until an error."""
        await self._check_intact()
        started, target = time.monotonic(), None if self.ready else await self._tail()
        if not self.ready and (target is None or _position(self._last) >= target):
            self._ready_after(started)  # an empty log
        while True:
            entries = await self._read()
            for entry_id, fields in entries:
                self._apply(entry_id, fields)
            if entries:
                if not self.ready and (target is None or _position(self._last) >= target):
                    self._ready_after(started)
                continue
            # Idle: nothing follows our last entry. Is it still in the log?
            await self._check_intact()
            if not self.ready:
                self._ready_after(started)  # the log ends here: everything is applied

    def _ready_after(self, started: float) -> None:
        self._replayed.set()
        took = time.monotonic() - started
        log.info("ledger log replayed: %d entries in %.2f s", self.applied, took)

    async def _read(self) -> list[tuple[str, dict[str, str]]]:
        reply: Any = await self._redis.xread(
            {self._key: self._last}, count=READ_BATCH, block=BLOCK_MS
        )
        if not reply:
            return []
        _, entries = reply[0]  # one stream: [(name, [(id, fields), ...])]
        return [(str(entry_id), dict(fields)) for entry_id, fields in entries]

    async def _tail(self) -> tuple[int, int] | None:
        """The position of the log's last entry now (None for an empty log)."""
        last = await self._redis.xrevrange(self._key, count=1)
        return _position(str(last[0][0])) if last else None

    async def _check_intact(self) -> None:
        if self._last == ORIGIN:
            return
        if not await self._redis.xrange(self._key, self._last, self._last):
            raise _LogBroken(f"entry {self._last}, applied here, is no longer in the log")

    def _apply(self, entry_id: str, fields: dict[str, str]) -> None:
        prev = fields.get("prev")
        if prev != self._last:
            raise _LogBroken(f"entry {entry_id} follows {prev}, but {self._last} was applied here")
        self._last, self._log_ms = entry_id, _position(entry_id)[0]
        self.applied += 1
        try:
            command = _COMMAND.validate_json(fields.get("cmd", ""))
        except ValidationError:
            # Skipped alike by every copy: not a command any version of ours wrote.
            log.warning("ledger log entry %s is not a command; skipped", entry_id)
            return
        result = execute(self._book, command, self._log_ms)
        waiter = self._waiting.get(command.id)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    def _rebuild(self) -> None:
        """Drop the copy: the log is replayed again from its first entry."""
        self._book = Book(self._ttl_ms, self._max_keys)
        self._last, self._log_ms, self.applied = ORIGIN, 0, 0
        self._replayed.clear()
        self.rebuilds += 1


def _command_id() -> str:
    return uuid.uuid4().hex


def _money_fields(user_id: int, idem: Idempotency) -> dict[str, Any]:
    return {"id": _command_id(), "user": user_id, "key": idem.key, "fp": idem.fingerprint}


def _now_ms() -> int:
    return int(time.time() * 1000)
