"""sessions and carts in SQL (session=db, cart=db); periodic sales reports

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

``sessions`` holds the sessions of the ``db`` placement, ``carts`` and
``cart_lines`` its carts; times are unix seconds, and ``live_until`` and
``expires_at`` are indexed for the periodic sweep. ``sales_reports`` gets one row
per run of the periodic sales summary, unique per (period length, period, slot).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("sid", sa.String(length=64), nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("username", sa.String(length=40), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("user_agent", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("live_until", sa.Double(), nullable=False),
        sa.Column("touched_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_sessions_user_id_users")),
        sa.PrimaryKeyConstraint("sid", name=op.f("pk_sessions")),
    )
    op.create_index("ix_sessions_user", "sessions", ["user_id", "created_at"])
    op.create_index("ix_sessions_live_until", "sessions", ["live_until"])
    op.create_table(
        "carts",
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_carts")),
    )
    op.create_index("ix_carts_expires_at", "carts", ["expires_at"])
    op.create_table(
        "cart_lines",
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_cart_lines_quantity_positive")),
        sa.ForeignKeyConstraint(
            ["owner"],
            ["carts.owner"],
            name=op.f("fk_cart_lines_owner_carts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("owner", "item_id", name=op.f("pk_cart_lines")),
    )
    op.create_table(
        "sales_reports",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("period_seconds", sa.Integer(), nullable=False),
        sa.Column("period", sa.BigInteger(), nullable=False),
        sa.Column("slot", sa.String(length=64), nullable=False),
        sa.Column("ran_by", sa.String(length=64), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("revenue_cents", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sales_reports")),
        sa.UniqueConstraint(
            "period_seconds", "period", "slot", name=op.f("uq_sales_reports_period")
        ),
    )


def downgrade() -> None:
    op.drop_table("sales_reports")
    op.drop_table("cart_lines")
    op.drop_index("ix_carts_expires_at", table_name="carts")
    op.drop_table("carts")
    op.drop_index("ix_sessions_live_until", table_name="sessions")
    op.drop_index("ix_sessions_user", table_name="sessions")
    op.drop_table("sessions")
