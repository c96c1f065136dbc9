"""Baseline: the pgvector extension and a key/value table of installation facts.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Agent memories and behaviour embeddings (later revisions) are vector columns.
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    # Facts about this installation that belong to no aggregate (e.g. which log position a
    # projection was rebuilt from); later revisions and services add keys, not columns.
    op.create_table(
        "swarm_meta",
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_table("swarm_meta")
    # The extension stays: it may have been installed before Swarm, and dropping it would
    # drop every vector column anyone created with it.
