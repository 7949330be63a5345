"""Balances and orders: the ledger placements.

- ``memory``: every replica keeps its own balances — the "stateful ATM". Two
  replicas give two different answers for the same account.
- ``db``: one SQL database. A withdrawal is a conditional ``UPDATE ... WHERE
  balance >= amount`` plus a ledger row in one transaction, so concurrent
  withdrawals through any replicas never take a balance below zero.

Every money-moving call carries an ``Idempotency`` (key + request fingerprint).
The first answer for a key is recorded with the change it made — in the same
transaction for ``db`` — and replayed for a retry with the same body.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from statelab.db import models
from statelab.domain.errors import (
    IdempotencyMismatch,
    InsufficientFunds,
    NotFound,
    RequestInFlight,
    StatelabError,
)
from statelab.domain.shop import PricedCart
from statelab.state.errors import store_guard

#: An in-flight key older than this is taken over: its replica died mid-request,
#: and because the change and the "done" mark commit together, nothing was applied.
STALE_IN_FLIGHT_MS = 30_000


@dataclass(frozen=True, slots=True)
class Idempotency:
    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """A recorded answer to a money-moving request."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


def error_outcome(status: int, exc: StatelabError) -> Outcome:
    return Outcome(status, {"error": type(exc).__name__, "title": exc.title, "detail": exc.detail})


class Ledger(Protocol):
    name: str

    async def balance(self, user_id: int) -> int: ...

    async def top_up(self, user_id: int, amount: int, idem: Idempotency) -> Outcome: ...

    async def withdraw(self, user_id: int, amount: int, idem: Idempotency) -> Outcome: ...

    async def checkout(self, user_id: int, cart: PricedCart, idem: Idempotency) -> Outcome: ...

    async def replay(self, user_id: int, idem: Idempotency) -> Outcome | None:
        """The recorded answer for this key, or None if the key is unused."""
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


# ---------------------------------------------------------------------------- memory


@dataclass
class _MemoryAccount:
    balance: int = 0
    orders: list[dict[str, Any]] = field(default_factory=list)


class MemoryLedger:
    """Balances in this replica's memory. Each operation runs without awaiting,
    so the event loop makes it atomic within the replica — and only there."""

    name = "memory"

    def __init__(self) -> None:
        self._accounts: dict[int, _MemoryAccount] = {}
        self._orders: dict[int, tuple[int, dict[str, Any]]] = {}
        self._keys: dict[tuple[int, str], tuple[str, Outcome]] = {}
        self._next_order = 1

    def _account(self, user_id: int) -> _MemoryAccount:
        return self._accounts.setdefault(user_id, _MemoryAccount())

    async def balance(self, user_id: int) -> int:
        return self._account(user_id).balance

    async def replay(self, user_id: int, idem: Idempotency) -> Outcome | None:
        seen = self._keys.get((user_id, idem.key))
        if seen is None:
            return None
        fingerprint, outcome = seen
        if fingerprint != idem.fingerprint:
            raise _mismatch()
        return Outcome(outcome.status, outcome.body, replayed=True)

    def _once(self, user_id: int, idem: Idempotency, op: Callable[[], Outcome]) -> Outcome:
        seen = self._keys.get((user_id, idem.key))
        if seen is not None:
            fingerprint, outcome = seen
            if fingerprint != idem.fingerprint:
                raise _mismatch()
            return Outcome(outcome.status, outcome.body, replayed=True)
        try:
            outcome = op()
        except InsufficientFunds as exc:
            outcome = error_outcome(409, exc)
        self._keys[(user_id, idem.key)] = (idem.fingerprint, outcome)
        return outcome

    async def top_up(self, user_id: int, amount: int, idem: Idempotency) -> Outcome:
        def op() -> Outcome:
            account = self._account(user_id)
            account.balance += amount
            return Outcome(200, {"balance_cents": account.balance})

        return self._once(user_id, idem, op)

    async def withdraw(self, user_id: int, amount: int, idem: Idempotency) -> Outcome:
        def op() -> Outcome:
            account = self._account(user_id)
            if account.balance < amount:
                raise _insufficient(account.balance, amount)
            account.balance -= amount
            return Outcome(200, {"balance_cents": account.balance})

        return self._once(user_id, idem, op)

    async def checkout(self, user_id: int, cart: PricedCart, idem: Idempotency) -> Outcome:
        def op() -> Outcome:
            account = self._account(user_id)
            if account.balance < cart.total_cents:
                raise _insufficient(account.balance, cart.total_cents)
            account.balance -= cart.total_cents
            order_id, self._next_order = self._next_order, self._next_order + 1
            order = _order_body(order_id, _items(cart), cart.total_cents, datetime.now(UTC), None)
            self._orders[order_id] = (user_id, order)
            account.orders.append(order)
            return Outcome(201, {**order, "balance_cents": account.balance})

        return self._once(user_id, idem, op)

    async def orders(self, user_id: int) -> list[dict[str, Any]]:
        return [dict(o) for o in reversed(self._account(user_id).orders)]

    async def order(self, user_id: int, order_id: int) -> dict[str, Any]:
        owner, order = self._orders.get(order_id, (None, None))
        if owner != user_id or order is None:
            raise NotFound(f"order {order_id} not found")
        return dict(order)

    async def set_receipt(self, order_id: int, receipt: str) -> bool:
        _, order = self._orders.get(order_id, (None, None))
        if order is None or order["receipt"] is not None:
            return False
        order["receipt"] = receipt
        return True


# -------------------------------------------------------------------------------- db

Change = Callable[[AsyncSession], Awaitable[Outcome]]


def _now_ms() -> int:
    return int(time.time() * 1000)


class SqlLedger:
    """Balances and orders in one SQL database shared by every replica."""

    name = "db"

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def balance(self, user_id: int) -> int:
        with store_guard("database"):
            async with self._sessions() as db:
                value = await db.scalar(
                    select(models.Account.balance_cents).where(models.Account.user_id == user_id)
                )
        return int(value or 0)

    async def top_up(self, user_id: int, amount: int, idem: Idempotency) -> Outcome:
        async def change(db: AsyncSession) -> Outcome:
            balance = await self._credit(db, user_id, amount)
            db.add(models.LedgerEntry(user_id=user_id, kind="top_up", amount_cents=amount))
            return Outcome(200, {"balance_cents": balance})

        return await self._once(user_id, idem, change)

    async def withdraw(self, user_id: int, amount: int, idem: Idempotency) -> Outcome:
        async def change(db: AsyncSession) -> Outcome:
            balance = await self._debit(db, user_id, amount)
            db.add(models.LedgerEntry(user_id=user_id, kind="withdraw", amount_cents=-amount))
            return Outcome(200, {"balance_cents": balance})

        return await self._once(user_id, idem, change)

    async def checkout(self, user_id: int, cart: PricedCart, idem: Idempotency) -> Outcome:
        async def change(db: AsyncSession) -> Outcome:
            balance = await self._debit(db, user_id, cart.total_cents)
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
            return Outcome(201, {**_order_row(order), "balance_cents": balance})

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

    # -- money moves --------------------------------------------------------------

    async def _credit(self, db: AsyncSession, user_id: int, amount: int) -> int:
        account = models.Account
        result = await db.execute(
            update(account)
            .where(account.user_id == user_id)
            .values(balance_cents=account.balance_cents + amount)
            .returning(account.balance_cents)
        )
        balance = result.scalar()
        if balance is None:
            db.add(models.Account(user_id=user_id, balance_cents=amount))
            await db.flush()
            balance = amount
        return int(balance)

    async def _debit(self, db: AsyncSession, user_id: int, amount: int) -> int:
        account = models.Account
        result = await db.execute(
            update(account)
            .where(account.user_id == user_id, account.balance_cents >= amount)
            .values(balance_cents=account.balance_cents - amount)
            .returning(account.balance_cents)
        )
        balance = result.scalar()
        if balance is None:
            current = await db.scalar(
                select(account.balance_cents).where(account.user_id == user_id)
            )
            raise _insufficient(int(current or 0), amount)
        return int(balance)

    # -- idempotency ----------------------------------------------------------------

    async def _once(self, user_id: int, idem: Idempotency, change: Change) -> Outcome:
        """Claim the key, apply the change and record its answer atomically."""
        with store_guard("database"):
            claim = await self._claim(user_id, idem)
            if isinstance(claim, Outcome):
                return claim
            try:
                return await self._apply(user_id, idem, change, claim)
            except InsufficientFunds as exc:
                return await self._record_refusal(user_id, idem, error_outcome(409, exc), claim)
            except BaseException:
                await self._release(user_id, idem, claim)
                raise

    async def _release(self, user_id: int, idem: Idempotency, stamp: int) -> None:
        """Give a claim back after a failure that applied nothing, so a retry runs."""
        key = models.IdempotencyKey
        try:
            async with self._sessions() as db, db.begin():
                await db.execute(
                    delete(key).where(
                        key.user_id == user_id, key.key == idem.key, key.started_at == stamp
                    )
                )
        except Exception:
            return

    async def replay(self, user_id: int, idem: Idempotency) -> Outcome | None:
        with store_guard("database"):
            async with self._sessions() as db:
                row = await db.get(models.IdempotencyKey, (user_id, idem.key))
        if row is None:
            return None
        if row.fingerprint != idem.fingerprint:
            raise _mismatch()
        if row.state != "done":
            raise RequestInFlight("a request with this Idempotency-Key is still in flight")
        return Outcome(int(row.status_code or 200), dict(row.body or {}), replayed=True)

    async def _claim(self, user_id: int, idem: Idempotency) -> Outcome | int:
        """Insert the key as in flight and return the claim's stamp; if the key
        exists, return the answer to give instead."""
        key = models.IdempotencyKey
        stamp = _now_ms()
        try:
            async with self._sessions() as db, db.begin():
                db.add(
                    key(
                        user_id=user_id,
                        key=idem.key,
                        fingerprint=idem.fingerprint,
                        state="in_flight",
                        started_at=stamp,
                    )
                )
            return stamp
        except IntegrityError:
            pass
        async with self._sessions() as db, db.begin():
            row = await db.get(key, (user_id, idem.key))
            if row is None:  # expired between our insert and read: try once more
                raise RequestInFlight("this Idempotency-Key is being processed; retry")
            if row.fingerprint != idem.fingerprint:
                raise _mismatch()
            if row.state == "done":
                return Outcome(int(row.status_code or 200), dict(row.body or {}), replayed=True)
            if _now_ms() - row.started_at < STALE_IN_FLIGHT_MS:
                raise RequestInFlight("a request with this Idempotency-Key is still in flight")
            row.started_at = stamp  # take over the claim of a replica that died
        return stamp

    async def _apply(self, user_id: int, idem: Idempotency, change: Change, stamp: int) -> Outcome:
        async with self._sessions() as db, db.begin():
            outcome = await change(db)
            await self._finish(db, user_id, idem, outcome, stamp)
        return outcome

    async def _record_refusal(
        self, user_id: int, idem: Idempotency, outcome: Outcome, stamp: int
    ) -> Outcome:
        async with self._sessions() as db, db.begin():
            await self._finish(db, user_id, idem, outcome, stamp)
        return outcome

    async def _finish(
        self, db: AsyncSession, user_id: int, idem: Idempotency, outcome: Outcome, stamp: int
    ) -> None:
        """Mark the key done in the change's own transaction. If another replica
        took the claim over meanwhile, raising here rolls our change back."""
        key = models.IdempotencyKey
        result = await db.execute(
            update(key)
            .where(
                key.user_id == user_id,
                key.key == idem.key,
                key.state == "in_flight",
                key.started_at == stamp,
            )
            .values(state="done", status_code=outcome.status, body=outcome.body)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise RequestInFlight("another request took this Idempotency-Key over; retry")


def _order_row(order: models.Order) -> dict[str, Any]:
    at = order.created_at if order.created_at.tzinfo else order.created_at.replace(tzinfo=UTC)
    return _order_body(order.id, list(order.items), order.total_cents, at, order.receipt)
