"""Agent behaviour embeddings: one vector per agent per Observer window, HNSW for cosine search.

A vector is the agent's smoothed behaviour (fuel and latency per call, error rate, message rate,
memory, mailbox, log rate, log-scaled, unit length) as `services.observer.detectors` builds it;
`swarm observe similar <agent>` finds the agents whose latest vectors are nearest.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Keep in step with services.observer.behaviour.DIMENSIONS (a migration imports no service).
DIMENSIONS = 8


def upgrade() -> None:
    op.execute(
        f"""
        CREATE TABLE agent_behaviour (
            id bigserial PRIMARY KEY,
            agent_id text NOT NULL,
            namespace text NOT NULL,
            name text NOT NULL,
            window_end timestamptz NOT NULL,
            embedding vector({DIMENSIONS}) NOT NULL,
            features jsonb NOT NULL,
            CONSTRAINT agent_behaviour_agent_window UNIQUE (agent_id, window_end)
        )
        """
    )
    op.execute(
        "CREATE INDEX agent_behaviour_embedding_hnsw ON agent_behaviour "
        "USING hnsw (embedding vector_cosine_ops)"
    )
    op.execute("CREATE INDEX agent_behaviour_latest ON agent_behaviour (agent_id, window_end DESC)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS agent_behaviour_latest")
    op.execute("DROP INDEX IF EXISTS agent_behaviour_embedding_hnsw")
    op.execute("DROP TABLE IF EXISTS agent_behaviour")
