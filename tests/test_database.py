"""The session Postgres fixture, the migrations and pgvector working together."""

from __future__ import annotations

import psycopg
from pgvector.psycopg import register_vector

from swarm.devstack.stack import upgrade_database


def test_migrations_apply_twice_and_pgvector_answers_similarity_queries(database_url: str) -> None:
    assert upgrade_database(database_url) == "0003"
    assert upgrade_database(database_url) == "0003"  # idempotent: nothing pending the second time
    with psycopg.connect(database_url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("CREATE TEMP TABLE probe (id int, embedding vector(3))")
        conn.execute("INSERT INTO probe VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0.9,0.1,0]')")
        rows = conn.execute(
            "SELECT id FROM probe ORDER BY embedding <=> '[1,0,0]' LIMIT 2"
        ).fetchall()
        assert [r[0] for r in rows] == [1, 3]
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert version == ("0003",)
