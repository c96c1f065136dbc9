"""The same checks against servers run by testcontainers, when a Docker engine answers.

Docker is the way most teams will run Swarm's dependencies; these tests prove the client and the
migrations work against the official images too. Without a Docker engine (as on the machines
this project is developed on) they are skipped, quickly and cleanly.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import psycopg
import pytest

from schemas import CommandAccepted, event, names, new_id
from swarm.devstack.stack import upgrade_database
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings


def _docker_answers() -> bool:
    """Ask the engine's /_ping directly: docker-py leaves a socket open when none answers, which
    warnings-as-errors would turn into a failure."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: str | tuple[str, int] = host.removeprefix("unix://")
        elif host.startswith("tcp://"):
            name, _, port = host.removeprefix("tcp://").partition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (name, int(port or 2375))
        else:
            return False
        with sock:
            sock.settimeout(2)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(256)
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(not _docker_answers(), reason="no Docker engine answers here"),
    pytest.mark.timeout(180),
]


@pytest.fixture(scope="module")
def container_postgres() -> Iterator[str]:
    from testcontainers.community.postgres import PostgresContainer

    with PostgresContainer("pgvector/pgvector:pg16", driver=None) as pg:
        yield pg.get_connection_url()


@pytest.fixture(scope="module")
def container_nats() -> Iterator[str]:
    from testcontainers.community.nats import NatsContainer

    with NatsContainer("nats:2.12-alpine", jetstream=True) as nats_server:
        yield nats_server.nats_uri()


def test_migrations_against_the_pgvector_image(container_postgres: str) -> None:
    assert upgrade_database(container_postgres) == "0003"
    with psycopg.connect(container_postgres) as conn:
        row = conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone()
        assert row == ("vector",)


async def test_event_log_against_the_nats_image(container_nats: str) -> None:
    log = await EventLog.connect(container_nats, Settings())
    try:
        agg = new_id()
        env = event(CommandAccepted(command_id=agg, command_type="t"), aggregate_id=agg, source="t")
        first = await log.append(env)
        assert (await log.append(env)).duplicate
        stored = [
            d async for d in log.replay(names.STREAM_EVENTS, subjects=[names.outcome_wildcard(agg)])
        ]
        assert [d.stream_seq for d in stored] == [first.seq]
    finally:
        await log.close()
