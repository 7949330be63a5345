"""menu and prices in SQL; the admin role

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

The menu moves from the package into ``menu_items``, seeded from
``statelab/domain/menu.json`` with the same ids, so carts and orders written before
keep pointing at the same items. Prices become data an admin changes at runtime;
``version`` counts each item's changes (the cache placements compare menu versions).
``users.is_admin`` is the admin role, granted by ``statelab admin grant``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from statelab.domain.shop import load_menu

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    menu_items = op.create_table(
        "menu_items",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("price_cents", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint("price_cents > 0", name=op.f("ck_menu_items_price_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_menu_items")),
    )
    op.bulk_insert(
        menu_items,
        [
            {"id": i.id, "name": i.name, "kind": i.kind, "price_cents": i.price_cents, "version": 1}
            for i in load_menu().items
        ],
    )
    # A plain ALTER TABLE, also on SQLite: a batch operation would copy ``users`` into
    # a new table and drop the old one, which the rows referring to it forbid.
    op.add_column(
        "users", sa.Column("is_admin", sa.Boolean(), server_default=sa.false(), nullable=False)
    )


def downgrade() -> None:
    op.drop_column("users", "is_admin")  # SQLite 3.35+ drops a column in place
    op.drop_table("menu_items")
