"""idempotency keys: recorded with their effect (no in-flight state), swept by age

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

A key row is now written in the transaction of its effect, so it only exists once
the request is finished: ``state`` goes, and ``status_code`` becomes ``outcome``
(applied | created | refused), which says what happened rather than how HTTP
answers it. ``started_at`` becomes ``created_at`` with an index for the sweep.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # An in-flight row never had an effect: the old code committed the effect and the
    # "done" mark together. Forgetting it lets a retry apply the request once.
    op.execute("DELETE FROM idempotency_keys WHERE state <> 'done'")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("outcome", sa.String(length=10), nullable=True))
    op.execute(
        "UPDATE idempotency_keys SET outcome = CASE"
        " WHEN status_code >= 400 THEN 'refused'"
        " WHEN status_code = 201 THEN 'created'"
        " ELSE 'applied' END"
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.alter_column("outcome", existing_type=sa.String(length=10), nullable=False)
        batch_op.alter_column("body", existing_type=sa.JSON(), nullable=False)
        batch_op.alter_column(
            "started_at",
            new_column_name="created_at",
            existing_type=sa.BigInteger(),
            existing_nullable=False,
        )
        batch_op.drop_column("state")
        batch_op.drop_column("status_code")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index("ix_idempotency_keys_created", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_idempotency_keys_created")
        batch_op.add_column(sa.Column("state", sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column("status_code", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE idempotency_keys SET state = 'done', status_code = CASE outcome"
        " WHEN 'refused' THEN 409 WHEN 'created' THEN 201 ELSE 200 END"
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.alter_column("state", existing_type=sa.String(length=10), nullable=False)
        batch_op.alter_column("body", existing_type=sa.JSON(), nullable=True)
        batch_op.alter_column(
            "created_at",
            new_column_name="started_at",
            existing_type=sa.BigInteger(),
            existing_nullable=False,
        )
        batch_op.drop_column("outcome")
