"""Balances and orders: the ledger placements.

- ``memory``: every replica keeps its own balances — the "stateful ATM". Two
  replicas give two different answers for the same account.
- ``db``: one SQL database. A withdrawal is a conditional ``UPDATE ... WHERE
  balance >= amount`` plus a ledger row in one transaction, so concurrent
  withdrawals through any replicas never take a balance below zero.
- ``replicated``: every replica keeps its own copy (a ``Book``, as the memory
  ledger does) and applies one shared, ordered replication log, so every copy
  computes the same outcomes (``state/replicated_ledger.py``).

Every money-moving call carries an ``Idempotency`` (key + request fingerprint) and
returns an ``Outcome`` saying what happened: the money moved (``applied``), an
order was paid (``created``) or nothing changed (``refused``, with the domain error
that says why) — and whether it is the replay of an earlier request's outcome.
Refusals are recorded too, so a retry gets the same refusal even if money arrived
in between. The ledger knows nothing of HTTP; the web layer turns outcomes into
answers.

How each placement keeps one outcome per key:

- ``db`` inserts the key row in the transaction of the effect, first, and fills in
  the outcome before the commit. A crash — of the replica, or of its connection —
  rolls both back, so no row can outlive the request that wrote it and a retry is
  answered as soon as the database notices. A concurrent duplicate waits on the
  key's primary key (PostgreSQL) or on the write lock (SQLite) until the first
  commits, then fails to insert and replays the recorded outcome. The effect runs
  in a savepoint, so a refusal undoes whatever it wrote and the key still records
  the refusal, in the same transaction.
- ``memory`` runs each call without awaiting: the event loop makes it atomic.
- ``replicated`` lets the log order the calls; a key already applied makes a later
  entry with it a replay, on every copy alike.

Keys are remembered for ``idempotency_ttl_seconds``: ``sweep`` forgets older ones
in bounded batches (the periodic work of ``state/timers.py`` calls it). The memory
and replicated ledgers also keep at most ``max_keys``, forgetting the oldest first,
so a flood of keys cannot grow a replica without limit.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from statelab.db import models
from statelab.domain.errors import (
    Conflict,
    IdempotencyMismatch,
    InsufficientFunds,
    NotFound,
    Unavailable,
)
from statelab.domain.shop import PricedCart, positive_amount
from statelab.state.errors import store_guard

#: At most this many keys are forgotten per ``sweep`` call: one short transaction,
#: so a backlog never holds the write lock (SQLite) or many row locks for long.
SWEEP_BATCH = 1000

#: A duplicate that found the key taken reads the record; if that record was swept
#: in between, the key is new again and the request is tried once more.
_ATTEMPTS = 3

#: What a money-moving request did (see ``Outcome``).
Kind = Literal["applied", "created", "refused"]


@dataclass(frozen=True, slots=True)
class Idempotency:
    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a money-moving request did.

    ``applied``: the money moved; ``body`` holds the new balance. ``created``: an
    order was paid; ``body`` holds it and the new balance. ``refused``: nothing
    changed; ``refusal`` is the domain error saying why. ``replayed``: this is the
    recorded outcome of an earlier request with the same key; nothing was done now.
    """

    kind: Kind
    body: dict[str, Any] = field(default_factory=dict)
    refusal: Conflict | None = None
    replayed: bool = False


#: The refusals a ledger records, by the name stored with the key.
_REFUSALS: dict[str, type[Conflict]] = {InsufficientFunds.__name__: InsufficientFunds}


def _applied(balance: int) -> Outcome:
    return Outcome("applied", {"balance_cents": balance})


def _refused(exc: Conflict) -> Outcome:
    return Outcome("refused", refusal=exc)


def _stored_body(outcome: Outcome) -> dict[str, Any]:
    """What a key row keeps: the answer's body, or the refusal's error and detail."""
    if outcome.refusal is None:
        return outcome.body
    exc = outcome.refusal
    return {"error": type(exc).__name__, "title": exc.title, "detail": exc.detail}


def _from_stored(kind: str, body: dict[str, Any]) -> Outcome:
    """The replay of a key row's outcome."""
    if kind == "refused":
        error = _REFUSALS.get(str(body.get("error")), Conflict)(str(body.get("detail", "")))
        return Outcome("refused", refusal=error, replayed=True)
    done: Kind = "created" if kind == "created" else "applied"
    return Outcome(done, dict(body), replayed=True)


class Ledger(Protocol):
    name: str

    async def balance(self, user_id: int) -> int: ...

    async def top_up(self, user_id: int, amount: int, idem: Idempotency) -> Outcome: ...

    async def withdraw(self, user_id: int, amount: int, idem: Idempotency) -> Outcome: ...

    async def checkout(self, user_id: int, cart: PricedCart, idem: Idempotency) -> Outcome: ...

    async def replay(self, user_id: int, idem: Idempotency) -> Outcome | None:
        """The recorded outcome for this key, or None if the key is unused."""
        ...

    async def sweep(self, now_ms: int, batch: int = SWEEP_BATCH) -> int:
        """Forget at most ``batch`` keys recorded longer than the TTL before
        ``now_ms`` (unix ms), oldest first; returns how many were forgotten."""
        ...

    async def orders(self, user_id: int) -> list[dict[str, Any]]: ...

    async def order(self, user_id: int, order_id: int) -> dict[str, Any]: ...

    async def set_receipt(self, order_id: int, receipt: str) -> bool:
        """Attach a receipt once; False if the order already had one."""
        ...


def _order_body(
    order_id: int, cart_items: list[dict[str, Any]], total: int, at: datetime, receipt: str | None
) -> dict[str, Any]:
    return {
        "id": order_id,
        "status": "paid",
        "total_cents": total,
        "items": cart_items,
        "created_at": at.isoformat(),
        "receipt": receipt,
    }


def _items(cart: PricedCart) -> list[dict[str, Any]]:
    return [
        {
            "item_id": ln.item_id,
            "name": ln.name,
            "quantity": ln.quantity,
            "price_cents": ln.price_cents,
        }
        for ln in cart.lines
    ]


def _mismatch() -> IdempotencyMismatch:
    return IdempotencyMismatch("this Idempotency-Key was used with another request")


def _insufficient(balance: int, amount: int) -> InsufficientFunds:
    return InsufficientFunds(f"balance is {balance} cents, {amount} cents were asked")


def _now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------- memory


@dataclass
class _MemoryAccount:
    balance: int = 0
    orders: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Remembered:
    fingerprint: str
    outcome: Outcome
    at_ms: int


class Book:
    """One copy of balances, orders and remembered keys in memory.

    Every change is a synchronous call told its time (unix ms), so what the book
    answers depends on nothing but the calls made and their order: the memory ledger
    drives one with the wall clock; each replica of the replicated ledger drives its
    own with the entries of one shared log, and every copy answers alike. Order ids
    count the paid orders, and keys expire by the time of the call that finds them,
    for the same reason. Times must not go backwards (a log's never do).
    """

    def __init__(self, key_ttl_ms: int, max_keys: int) -> None:
        self._accounts: dict[int, _MemoryAccount] = {}
        self._orders: dict[int, tuple[int, dict[str, Any]]] = {}
        # Oldest first: keys are only ever appended, so expiry and the bound both
        # forget from the front.
        self._keys: OrderedDict[tuple[int, str], _Remembered] = OrderedDict()
        self._ttl_ms = key_ttl_ms
        self._max_keys = max_keys
        self._next_order = 1

    def _account(self, user_id: int) -> _MemoryAccount:
        return self._accounts.setdefault(user_id, _MemoryAccount())

    def balance(self, user_id: int) -> int:
        account = self._accounts.get(user_id)
        return 0 if account is None else account.balance

    def recall(self, user_id: int, idem: Idempotency, now_ms: int | None = None) -> Outcome | None:
        """The recorded outcome of the key (a replay), None if it is unknown — or,
        given ``now_ms``, expired by then; ``IdempotencyMismatch`` for another body."""
        seen = self._keys.get((user_id, idem.key))
        if seen is None or (now_ms is not None and seen.at_ms < now_ms - self._ttl_ms):
            return None
        if seen.fingerprint != idem.fingerprint:
            raise _mismatch()
        return replace(seen.outcome, replayed=True)

    def forget(self, now_ms: int, batch: int | None = None) -> int:
        """Forget keys older than the TTL at ``now_ms``, oldest first (all of them
        without a batch); returns how many were forgotten."""
        cutoff, forgotten = now_ms - self._ttl_ms, 0
        while self._keys and (batch is None or forgotten < batch):
            if next(iter(self._keys.values())).at_ms >= cutoff:
                break
            self._keys.popitem(last=False)
            forgotten += 1
        return forgotten

    def _remember(self, user_id: int, idem: Idempotency, outcome: Outcome, at_ms: int) -> None:
        self._keys[(user_id, idem.key)] = _Remembered(idem.fingerprint, outcome, at_ms)
        while len(self._keys) > self._max_keys:
            # The bound wins over the TTL: under a flood, the oldest keys go first.
            self._keys.popitem(last=False)

    def _once(
        self, user_id: int, idem: Idempotency, at_ms: int, op: Callable[[], Outcome]
    ) -> Outcome:
        self.forget(at_ms)
        recalled = self.recall(user_id, idem)
        if recalled is not None:
            return recalled
        try:
            outcome = op()
        except InsufficientFunds as exc:
            outcome = _refused(exc)
        self._remember(user_id, idem, outcome, at_ms)
        return outcome

    def top_up(self, user_id: int, amount: int, idem: Idempotency, at_ms: int) -> Outcome:
        positive_amount(amount)

        def op() -> Outcome:
            account = self._account(user_id)
            account.balance += amount
            return _applied(account.balance)

        return self._once(user_id, idem, at_ms, op)

    def withdraw(self, user_id: int, amount: int, idem: Idempotency, at_ms: int) -> Outcome:
        positive_amount(amount)

        def op() -> Outcome:
            account = self._account(user_id)
            if account.balance < amount:
                raise _insufficient(account.balance, amount)
            account.balance -= amount
            return _applied(account.balance)

        return self._once(user_id, idem, at_ms, op)

    def checkout(
        self, user_id: int, items: list[dict[str, Any]], total: int, idem: Idempotency, at_ms: int
    ) -> Outcome:
        """Pay ``total`` for ``items`` (as ``_items`` lists a cart) and record the order."""

        def op() -> Outcome:
            account = self._account(user_id)
            if account.balance < total:
                raise _insufficient(account.balance, total)
            account.balance -= total
            order_id, self._next_order = self._next_order, self._next_order + 1
            at = datetime.fromtimestamp(at_ms / 1000, UTC)
            order = _order_body(order_id, [dict(i) for i in items], total, at, None)
            self._orders[order_id] = (user_id, order)
            account.orders.append(order)
            return Outcome("created", {**order, "balance_cents": account.balance})

        return self._once(user_id, idem, at_ms, op)

    def orders(self, user_id: int) -> list[dict[str, Any]]:
        account = self._accounts.get(user_id)
        return [] if account is None else [dict(o) for o in reversed(account.orders)]

    def order(self, user_id: int, order_id: int) -> dict[str, Any]:
        owner, order = self._orders.get(order_id, (None, None))
        if owner != user_id or order is None:
            raise NotFound(f"order {order_id} not found")
        return dict(order)

    def set_receipt(self, order_id: int, receipt: str) -> bool:
        _, order = self._orders.get(order_id, (None, None))
        if order is None or order["receipt"] is not None:
            return False
        order["receipt"] = receipt
        return True


class MemoryLedger:
    """Balances in this replica's memory. Each operation runs without awaiting,
    so the event loop makes it atomic within the replica — and only there."""

    name = "memory"

    def __init__(self, key_ttl_seconds: float, max_keys: int) -> None:
        self._book = Book(int(key_ttl_seconds * 1000), max_keys)

    async def balance(self, user_id: int) -> int:
        return self._book.balance(user_id)

    async def replay(self, user_id: int, idem: Idempotency) -> Outcome | None:
        return self._book.recall(user_id, idem)

    async def sweep(self, now_ms: int, batch: int = SWEEP_BATCH) -> int:
        return self._book.forget(now_ms, batch)

    async def top_up(self, user_id: int, amount: int, idem: Idempotency) -> Outcome:
        return self._book.top_up(user_id, amount, idem, _now_ms())

    async def withdraw(self, user_id: int, amount: int, idem: Idempotency) -> Outcome:
        return self._book.withdraw(user_id, amount, idem, _now_ms())

    async def checkout(self, user_id: int, cart: PricedCart, idem: Idempotency) -> Outcome:
        return self._book.checkout(user_id, _items(cart), cart.total_cents, idem, _now_ms())

    async def orders(self, user_id: int) -> list[dict[str, Any]]:
        return self._book.orders(user_id)

    async def order(self, user_id: int, order_id: int) -> dict[str, Any]:
        return self._book.order(user_id, order_id)

    async def set_receipt(self, order_id: int, receipt: str) -> bool:
        return self._book.set_receipt(order_id, receipt)


# -------------------------------------------------------------------------------- db

#: A money move inside the ledger's transaction; raising ``InsufficientFunds``
#: refuses it (whatever it wrote is rolled back with its savepoint).
Change = Callable[[AsyncSession], Awaitable[Outcome]]


class _KeyTaken(Exception):
    """Another request recorded this key first (or is recording it right now)."""


class SqlLedger:
    """Balances and orders in one SQL database shared by every replica."""

    name = "db"

    def __init__(self, sessions: async_sessionmaker[AsyncSession], key_ttl_seconds: float) -> None:
        self._sessions = sessions
        self._ttl_ms = int(key_ttl_seconds * 1000)

    async def balance(self, user_id: int) -> int:
        with store_guard("database"):
            async with self._sessions() as db:
                value = await db.scalar(
                    select(models.Account.balance_cents).where(models.Account.user_id == user_id)
                )
        return int(value or 0)

    async def top_up(self, user_id: int, amount: int, idem: Idempotency) -> Outcome:
        positive_amount(amount)

        async def change(db: AsyncSession) -> Outcome:
            balance = await _credit(db, user_id, amount)
            db.add(models.LedgerEntry(user_id=user_id, kind="top_up", amount_cents=amount))
            return _applied(balance)

        return await self._once(user_id, idem, change)

    async def withdraw(self, user_id: int, amount: int, idem: Idempotency) -> Outcome:
        positive_amount(amount)

        async def change(db: AsyncSession) -> Outcome:
            balance = await _debit(db, user_id, amount)
            db.add(models.LedgerEntry(user_id=user_id, kind="withdraw", amount_cents=-amount))
            return _applied(balance)

        return await self._once(user_id, idem, change)

    async def checkout(self, user_id: int, cart: PricedCart, idem: Idempotency) -> Outcome:
        async def change(db: AsyncSession) -> Outcome:
            balance = await _debit(db, user_id, cart.total_cents)
            order = models.Order(
                user_id=user_id,
                status="paid",
                total_cents=cart.total_cents,
                items=_items(cart),
                created_at=datetime.now(UTC),
            )
            db.add(order)
            await db.flush()
            db.add(
                models.LedgerEntry(
                    user_id=user_id, kind="order", amount_cents=-cart.total_cents, order_id=order.id
                )
            )
            return Outcome("created", {**_order_row(order), "balance_cents": balance})

        return await self._once(user_id, idem, change)

    async def orders(self, user_id: int) -> list[dict[str, Any]]:
        with store_guard("database"):
            async with self._sessions() as db:
                rows = await db.scalars(
                    select(models.Order)
                    .where(models.Order.user_id == user_id)
                    .order_by(models.Order.id.desc())
                )
                return [_order_row(o) for o in rows]

    async def order(self, user_id: int, order_id: int) -> dict[str, Any]:
        with store_guard("database"):
            async with self._sessions() as db:
                row = await db.get(models.Order, order_id)
        if row is None or row.user_id != user_id:
            raise NotFound(f"order {order_id} not found")
        return _order_row(row)

    async def set_receipt(self, order_id: int, receipt: str) -> bool:
        with store_guard("database"):
            async with self._sessions() as db, db.begin():
                result = await db.execute(
                    update(models.Order)
                    .where(models.Order.id == order_id, models.Order.receipt.is_(None))
                    .values(receipt=receipt)
                )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    # -- idempotency ----------------------------------------------------------------

    async def replay(self, user_id: int, idem: Idempotency) -> Outcome | None:
        with store_guard("database"):
            async with self._sessions() as db:
                row = await db.get(models.IdempotencyKey, (user_id, idem.key))
        if row is None:
            return None
        if row.fingerprint != idem.fingerprint:
            raise _mismatch()
        return _from_stored(row.outcome, row.body)

    async def sweep(self, now_ms: int, batch: int = SWEEP_BATCH) -> int:
        key = models.IdempotencyKey
        oldest = (
            select(key.user_id, key.key)
            .where(key.created_at < now_ms - self._ttl_ms)
            .order_by(key.created_at)
            .limit(batch)
        )
        statement = delete(key).where(tuple_(key.user_id, key.key).in_(oldest))
        with store_guard("database"):
            async with self._sessions() as db, db.begin():
                result = await db.execute(
                    statement, execution_options={"synchronize_session": False}
                )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def _once(self, user_id: int, idem: Idempotency, change: Change) -> Outcome:
        """Apply the change and record the key in one transaction, or replay the
        key's recorded outcome."""
        with store_guard("database"):
            for _ in range(_ATTEMPTS):
                with contextlib.suppress(_KeyTaken):
                    return await self._apply(user_id, idem, change)
                recorded = await self.replay(user_id, idem)
                if recorded is not None:
                    return recorded
        raise Unavailable("this Idempotency-Key was recorded and forgotten meanwhile; retry")

    async def _apply(self, user_id: int, idem: Idempotency, change: Change) -> Outcome:
        async with self._sessions() as db, db.begin():
            record = models.IdempotencyKey(
                user_id=user_id,
                key=idem.key,
                fingerprint=idem.fingerprint,
                outcome="refused",  # filled in below, before anyone can see the row
                body={},
                created_at=_now_ms(),
            )
            db.add(record)
            try:
                # First, so a concurrent duplicate waits here instead of moving money.
                await db.flush()
            except IntegrityError as exc:
                raise _KeyTaken from exc
            outcome = await _refusable(db, change)
            record.outcome, record.body = outcome.kind, _stored_body(outcome)
        return outcome


async def _refusable(db: AsyncSession, change: Change) -> Outcome:
    """Run the change in a savepoint; a refusal rolls back what it wrote."""
    try:
        async with db.begin_nested():
            return await change(db)
    except InsufficientFunds as exc:
        return _refused(exc)


# -- money moves ------------------------------------------------------------------


async def _credit(db: AsyncSession, user_id: int, amount: int) -> int:
    balance = await _add_to_balance(db, user_id, amount)
    if balance is not None:
        return balance
    try:
        async with db.begin_nested():
            db.add(models.Account(user_id=user_id, balance_cents=amount))
            await db.flush()
        return amount
    except IntegrityError:
        # Another first top-up opened the account meanwhile (it committed: the
        # insert waited for it); add to the balance it made.
        balance = await _add_to_balance(db, user_id, amount)
        assert balance is not None
        return balance


async def _add_to_balance(db: AsyncSession, user_id: int, amount: int) -> int | None:
    account = models.Account
    result = await db.execute(
        update(account)
        .where(account.user_id == user_id)
        .values(balance_cents=account.balance_cents + amount)
        .returning(account.balance_cents)
    )
    balance = result.scalar()
    return None if balance is None else int(balance)


async def _debit(db: AsyncSession, user_id: int, amount: int) -> int:
    account = models.Account
    result = await db.execute(
        update(account)
        .where(account.user_id == user_id, account.balance_cents >= amount)
        .values(balance_cents=account.balance_cents - amount)
        .returning(account.balance_cents)
    )
    balance = result.scalar()
    if balance is None:
        current = await db.scalar(select(account.balance_cents).where(account.user_id == user_id))
        raise _insufficient(int(current or 0), amount)
    return int(balance)


def _order_row(order: models.Order) -> dict[str, Any]:
    at = order.created_at if order.created_at.tzinfo else order.created_at.replace(tzinfo=UTC)
    return _order_body(order.id, list(order.items), order.total_cents, at, order.receipt)
