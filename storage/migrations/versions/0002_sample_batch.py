"""Samples know their batch (one studio generation or one command-line batch folder), for the review queue.

Revision ID: 0002_sample_batch
Revises: 0001_initial
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_sample_batch"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("generated_samples") as table:
        table.add_column(sa.Column("batch", sa.String(), nullable=True))
        table.create_index("ix_generated_samples_batch", ["batch"])


def downgrade() -> None:
    with op.batch_alter_table("generated_samples") as table:
        table.drop_index("ix_generated_samples_batch")
        table.drop_column("batch")
