"""Agent vector memory: one table, namespaced per agent, with an HNSW index for cosine search.

Every vector has 384 dimensions, the size of all-MiniLM-L6-v2 embeddings (the model the pod
uses when an agent passes text); `runtime.memory.DIMENSIONS` says the same and refuses others.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Keep in step with runtime.memory.DIMENSIONS (a migration does not import the runtime).
DIMENSIONS = 384


def upgrade() -> None:
    # `agent_namespace` is the agent id: replicas of one agent share their memory, other agents
    # never see it (every query filters on it).
    op.execute(
        f"""
        CREATE TABLE agent_memory (
            id bigserial PRIMARY KEY,
            agent_namespace text NOT NULL,
            key text NOT NULL,
            embedding vector({DIMENSIONS}) NOT NULL,
            data jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT agent_memory_namespace_key UNIQUE (agent_namespace, key)
        )
        """
    )
    op.execute(
        "CREATE INDEX agent_memory_embedding_hnsw ON agent_memory "
        "USING hnsw (embedding vector_cosine_ops)"
    )
    op.execute("CREATE INDEX agent_memory_namespace ON agent_memory (agent_namespace)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS agent_memory_namespace")
    op.execute("DROP INDEX IF EXISTS agent_memory_embedding_hnsw")
    op.execute("DROP TABLE IF EXISTS agent_memory")
