"""Alembic environment for Swarm's PostgreSQL schema.

There is no alembic.ini: `swarm.devstack.stack.alembic_config(url)` builds the config in code and
hands the database URL over in `config.attributes["database_url"]`. To run Alembic by hand::

    python -c "from alembic import command; from swarm.devstack.stack import alembic_config; \\
               command.revision(alembic_config('postgresql://…'), 'add agents', rev_id='0002')"
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

#: Serialises migrations of one database: two stacks sharing an external database may start at
#: the same moment, and both would otherwise run the same DDL.
_MIGRATION_LOCK = 0x5357_524D  # "SWRM"


def _url() -> str:
    url = context.config.attributes.get("database_url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError(
            "no database URL: build the config with swarm.devstack.stack.alembic_config"
        )
    return str(url)


def run_offline() -> None:
    """Print the SQL instead of running it (`alembic upgrade --sql`)."""
    context.configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection)
            with context.begin_transaction():
                # Transaction-scoped: released by the commit that records the new revision.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                )
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
