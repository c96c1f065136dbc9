"""The session Postgres fixture, the migrations and pgvector working together."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from pgvector.psycopg import register_vector

from swarm.devstack.embedded import EmbeddedPostgres, postgres_bin, prepare_server_user
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


def no_password(url: str) -> str:
    """`url` without its password: what another user of the machine could try."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"postgres@{parts.hostname}:{parts.port}"))


@pytest.mark.skipif(
    bool(os.environ.get("SWARM_DATABASE_URL")), reason="an external server: its access is its own"
)
def test_the_embedded_server_asks_every_connection_for_the_password(database_url: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(no_password(database_url), connect_timeout=10)
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_a_cluster_made_with_trust_gets_a_password_on_its_next_start(tmp_path: Path) -> None:
    """Stacks made before passwords kept a `trust` cluster: it is narrowed when it starts."""
    server = EmbeddedPostgres(tmp_path / "postgres")
    server.data_dir.mkdir()
    ids = prepare_server_user(server.pgdata)
    if ids:
        os.chown(server.data_dir, *ids)
    made = subprocess.run(
        [str(postgres_bin() / "initdb"), "--auth=trust", "-U", "postgres", "-D", server.pgdata],
        capture_output=True,
        check=False,
        user=ids[0] if ids else None,
        group=ids[1] if ids else None,
        timeout=50,
    )
    assert made.returncode == 0, made.stderr
    url = server.start()
    try:
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(no_password(url), connect_timeout=10)
        with psycopg.connect(url, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert server.password_file.stat().st_mode & 0o077 == 0
    finally:
        server.stop()
