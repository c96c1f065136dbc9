"""Behaviour embeddings in PostgreSQL + pgvector (table `agent_behaviour`, migration 0003).

One vector per agent per window; the latest vector of each agent is what `similar` compares.
Writes are idempotent (unique per agent and window end), so a window replayed after a restart
is not stored twice. Synchronous psycopg: the service calls it from a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from pgvector import Vector
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

from swarm.kernel.database import psycopg_url

#: Keep in step with migration 0003 (7 signals and a constant component).
DIMENSIONS = 8

_STORE = """
INSERT INTO agent_behaviour (agent_id, namespace, name, window_end, embedding, features)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (agent_id, window_end) DO NOTHING
"""

# The latest vector of every agent, then those nearest to the given agent's latest.
_SIMILAR = """
WITH latest AS (
    SELECT DISTINCT ON (agent_id) agent_id, namespace, name, window_end, embedding
    FROM agent_behaviour
    ORDER BY agent_id, window_end DESC
), me AS (
    SELECT embedding FROM latest WHERE agent_id = %(agent)s
)
SELECT l.agent_id, l.namespace, l.name, l.window_end, l.embedding <=> me.embedding AS distance
FROM latest l, me
WHERE l.agent_id <> %(agent)s
ORDER BY distance
LIMIT %(k)s
"""

_RESOLVE = """
SELECT agent_id FROM agent_behaviour
WHERE agent_id = %(key)s OR name = %(key)s OR namespace || '/' || name = %(key)s
ORDER BY window_end DESC LIMIT 1
"""


@dataclass(frozen=True, slots=True)
class BehaviourRow:
    agent_id: str
    namespace: str
    name: str
    window_end: float
    vector: Sequence[float]
    features: dict[str, float]


@dataclass(frozen=True, slots=True)
class SimilarAgent:
    agent_id: str
    namespace: str
    name: str
    window_end: datetime
    distance: float


class BehaviourStore:
    """One connection, opened on first use; not shared between threads."""

    def __init__(self, database_url: str, *, connect_timeout_s: int = 2) -> None:
        self._url = psycopg_url(database_url)
        self._timeout = connect_timeout_s
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._timeout)
            register_vector(conn)
            self._conn = conn
        return self._conn

    def store(self, rows: Sequence[BehaviourRow]) -> None:
        if not rows:
            return
        conn = self._connection()
        with conn.cursor() as cur:
            cur.executemany(
                _STORE,
                [
                    (
                        r.agent_id,
                        r.namespace,
                        r.name,
                        datetime.fromtimestamp(r.window_end, UTC),
                        Vector(list(r.vector)),
                        Jsonb(r.features),
                    )
                    for r in rows
                ],
            )

    def resolve(self, key: str) -> str | None:
        """An agent id from an id, a name or `namespace/name` (the most recently seen)."""
        row = self._connection().execute(_RESOLVE, {"key": key}).fetchone()
        return None if row is None else str(row[0])

    def similar(self, agent_id: str, k: int) -> list[SimilarAgent]:
        rows = self._connection().execute(_SIMILAR, {"agent": agent_id, "k": k}).fetchall()
        return [SimilarAgent(r[0], r[1], r[2], r[3], float(r[4])) for r in rows]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
