"""The SQL schema. Changing it means a new Alembic revision in ``migrations/versions``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so migrations can refer to them on every database.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only autoincrements INTEGER primary keys; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    """An account: always in SQL, in every profile."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(40), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Granted and revoked only by ``statelab admin``; read from here on every admin request.
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class MenuItem(Base):
    """The menu and its prices: the authoritative copy every cache placement serves.
    ``version`` counts the item's changes, so the menu's version (their sum) grows
    with every price change and a cache can refuse to store an older copy."""

    __tablename__ = "menu_items"
    __table_args__ = (CheckConstraint("price_cents > 0", name="price_positive"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(20))
    price_cents: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(BigInteger, default=1)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Account(Base):
    """The balance of the ``db`` ledger. The CHECK is the last line of defence."""

    __tablename__ = "accounts"
    __table_args__ = (CheckConstraint("balance_cents >= 0", name="balance_not_negative"),)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    balance_cents: Mapped[int] = mapped_column(BigInteger, default=0)


class LedgerEntry(Base):
    """Every movement of money, so balances can be audited against their history."""

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_user", "user_id", "id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(20))  # top_up | withdraw | order
    amount_cents: Mapped[int] = mapped_column(BigInteger)  # signed: + in, - out
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (Index("ix_orders_user", "user_id", "id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(20))
    total_cents: Mapped[int] = mapped_column(BigInteger)
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    receipt: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class IdempotencyKey(Base):
    """One money-moving request per (user, key): its fingerprint and what it did.

    Written in the transaction of the request's effect, so it exists exactly when
    the effect does. Kept ``idempotency_ttl_seconds``, then swept (oldest first, by
    ``created_at``)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created", "created_at"),)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(10))  # applied | created | refused
    body: Mapped[dict[str, Any]] = mapped_column(JSON)  # the answer, or the refusal's error
    created_at: Mapped[int] = mapped_column(BigInteger)  # unix ms


class ChatRoom(Base):
    """A chat room of the ``redis`` chat placement; ``last_seq`` hands out the
    per-room message sequence numbers (one atomic UPDATE ... RETURNING each)."""

    __tablename__ = "chat_rooms"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ChatMember(Base):
    __tablename__ = "chat_members"
    room_id: Mapped[str] = mapped_column(ForeignKey("chat_rooms.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    last_read_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    joined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ChatMessage(Base):
    """A message, stored before it is acknowledged. A resend of the same
    ``client_msg_id`` by the same sender hits the unique constraint: stored once."""

    __tablename__ = "chat_messages"
    __table_args__ = (
        UniqueConstraint("room_id", "sender_id", "client_msg_id", name="uq_chat_messages_client"),
    )
    room_id: Mapped[str] = mapped_column(ForeignKey("chat_rooms.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sender_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    sender: Mapped[str] = mapped_column(String(40))
    text: Mapped[str] = mapped_column(Text)
    client_msg_id: Mapped[str] = mapped_column(String(64))
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StoredFile(Base):
    """Metadata of an uploaded file of the ``objects`` placement. The bytes live in
    the object store under ``object_key``, a random name never derived from input."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_owner", "owner_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    filename: Mapped[str] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(50))
    size: Mapped[int] = mapped_column(BigInteger)
    object_key: Mapped[str] = mapped_column(String(200), unique=True)
    purpose: Mapped[str] = mapped_column(String(20))  # photo | thumbnail | receipt
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), nullable=True)
    thumbnail: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# --------------------------------------------- session=db, cart=db, timers (0005)


class LoginSession(Base):
    """A session of the ``db`` placement: the row behind an opaque cookie id.

    Times are unix seconds. ``live_until`` is the one deadline a read checks: the
    idle timeout from the last renewal, capped by the absolute ``expires_at``; the
    periodic sweep deletes rows past it (its index)."""

    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_user", "user_id", "created_at"),
        Index("ix_sessions_live_until", "live_until"),
    )
    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    username: Mapped[str] = mapped_column(String(40))
    csrf_token: Mapped[str] = mapped_column(String(64))
    user_agent: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)
    live_until: Mapped[float] = mapped_column(Double)
    touched_at: Mapped[float] = mapped_column(Double)


class Cart(Base):
    """A cart of the ``db`` placement. Every change first takes this row (an upsert),
    so changes of one cart are serialised on any database; the cart is forgotten
    ``expires_at`` (unix seconds), renewed by each change."""

    __tablename__ = "carts"
    __table_args__ = (Index("ix_carts_expires_at", "expires_at"),)
    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Double)


class CartLine(Base):
    __tablename__ = "cart_lines"
    __table_args__ = (CheckConstraint("quantity > 0", name="quantity_positive"),)
    owner: Mapped[str] = mapped_column(
        ForeignKey("carts.owner", ondelete="CASCADE"), primary_key=True
    )
    item_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    quantity: Mapped[int] = mapped_column(Integer)


class SalesReport(Base):
    """One run of the periodic sales summary (``state/timers.py``).

    ``slot`` is who may write the period's row: the replica id for ``timers=inprocess``
    (each replica writes its own), ``scheduler`` for ``timers=scheduler`` (one row a
    period). The unique constraint makes a second run of a period write nothing."""

    __tablename__ = "sales_reports"
    __table_args__ = (
        UniqueConstraint("period_seconds", "period", "slot", name="uq_sales_reports_period"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    period_seconds: Mapped[int] = mapped_column(Integer)
    period: Mapped[int] = mapped_column(BigInteger)  # floor(period start / period_seconds)
    slot: Mapped[str] = mapped_column(String(64))
    ran_by: Mapped[str] = mapped_column(String(64))
    orders: Mapped[int] = mapped_column(Integer)
    revenue_cents: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Double)
