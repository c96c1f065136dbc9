"""Session fixtures: a real nats-server and a real PostgreSQL+pgvector, always torn down.

`SWARM_NATS_URL` / `SWARM_DATABASE_URL` point the suite at external servers instead. Embedded
servers run with a parent-death signal, so even a SIGKILLed pytest leaves none behind.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from swarm.devstack.embedded import EmbeddedNats, EmbeddedPostgres
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings
from tests.helpers.scheduling import ModulesTogether, longest_first
from tests.helpers.servers import own_nats

# The CLI's tables take the terminal's width, and `COLUMNS` when there is none; pytest-xdist
# workers run with COLUMNS=80 set (seen here), which cuts the ids the CLI tests look for. One width
# for every test, however the suite runs.
os.environ["COLUMNS"] = "200"

# CliRunner swaps `sys.stdout` process-wide while a verb runs, and structlog's default prints to
# whatever `sys.stdout` is then: a log line of any component in this process (an in-process
# Hive, or a client an earlier test left reconnecting to its stopped server) would land in the
# verb's captured output and break `-o json`. Logs go to the real stderr for the whole suite.
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.__stderr__))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests first (`tests.helpers.scheduling`). First among the plain hooks: after
    pytest-randomly's shuffle (a wrapper), and before pytest's `-m`/`-k` deselection."""
    longest_first(items, float(config.getini("timeout")))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> ModulesTogether | None:
    """`--dist loadgroup` with the groups of `tests.helpers.scheduling` (xdist's own do nothing
    under pytest 9); any other `--dist` as xdist does it."""
    if config.getvalue("dist") != "loadgroup":
        return None
    return ModulesTogether(config, log)


@pytest.fixture(autouse=True)
def _own_state_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test records and finds "the current stack" (`swarm.cli.discovery`) in a state dir of
    its own: never the user's, and never one an earlier test left a stack recorded in."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


def _external_or_embedded(
    variable: str, embedded: Callable[[], EmbeddedNats | EmbeddedPostgres]
) -> Iterator[str]:
    """The URL of the server `variable` names, or of an embedded one started for the session."""
    external = os.environ.get(variable)
    if external:
        yield external
        return
    server = embedded()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _external_or_embedded(
        "SWARM_NATS_URL", lambda: EmbeddedNats(tmp_path_factory.mktemp("nats"))
    )


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _external_or_embedded(
        "SWARM_DATABASE_URL", lambda: EmbeddedPostgres(tmp_path_factory.mktemp("postgres"))
    )


@pytest.fixture(scope="session")
def settings(nats_url: str) -> Settings:
    return Settings(nats_url=nats_url)


@pytest.fixture
async def event_log(nats_url: str, settings: Settings) -> AsyncIterator[EventLog]:
    async with await EventLog.connect(nats_url, settings, name="pytest") as log:
        yield log


@pytest.fixture
def own_nats_url(tmp_path: Path) -> Iterator[str]:
    """A nats-server of this test's own, for a test that reads whole streams (no other test may
    write there) or stops the server."""
    with own_nats(tmp_path / "nats") as url:
        yield url


@pytest.fixture
async def own_log(own_nats_url: str) -> AsyncIterator[EventLog]:
    """A log client of that server, with Swarm's streams made."""
    settings = Settings(nats_url=own_nats_url)
    async with await EventLog.connect(own_nats_url, settings, name="test") as log:
        yield log


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "swarm-data"
