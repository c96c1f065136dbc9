"""How the CLI finds and reaches NATS.

The URL comes from, in order: `--nats-url`, `SWARM_NATS_URL`, or the state file the running
embedded stack (`swarm up`) writes to `<data dir>/stack.json`, the data dir being the one
`swarm.cli.discovery` picks (SWARM_HOME, the stack `swarm up` started last, ./.swarm).
Connecting fails fast with a readable message: a CLI must not hang retrying a server that is not
there, the way a long-lived service does.

nats-py, pydantic and the kernel are imported by the functions that use them: every `swarm`
call imports this module for its options (tests/test_cli_start.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from swarm.cli import discovery
from swarm.cli.output import EXIT_UNAVAILABLE, EXIT_USAGE, CliError
from swarm.client import env

if TYPE_CHECKING:
    from swarm.client.commands import closing as closing  # verbs replay through it
    from swarm.client.eventlog import EventLog
    from swarm.client.settings import Settings
    from swarm.client.swarm import Swarm

#: File in the data dir where `swarm up` records the URLs of the servers it started.
STACK_STATE_FILE = discovery.STACK_STATE_FILE
T = TypeVar("T")

_NO_STACK = "no Swarm stack found: run `swarm up` or pass --nats-url"

NatsUrlOption = Annotated[
    str | None,
    typer.Option(
        "--nats-url",
        help="NATS server URL (default: $SWARM_NATS_URL, else the stack started by `swarm up`).",
        show_default=False,
    ),
]


def __getattr__(name: str) -> Any:
    # `connect.closing` stays importable from here without importing the client layer up front.
    if name == "closing":
        from swarm.client.commands import closing

        return closing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class NatsTarget:
    """A NATS URL and where it was found, so an error can say which setting to fix."""

    url: str
    origin: str
    #: The Hive's public key, when the stack that named the URL recorded it.
    hive_public_key: str | None = None
    #: The nkey seed file the stack that named the URL admits its owner with
    #: (else `$SWARM_NATS_CREDENTIALS`, read when connecting).
    credentials: Path | None = None
    #: The CA the stack's server certificate is verified against (else `$SWARM_NATS_CA`).
    ca: Path | None = None

    def describe(self) -> str:
        return f"{self.url} (from {self.origin})"


def load_settings(**overrides: Any) -> Settings:
    """`Settings(**overrides)`, the rest from the environment, with a bad `SWARM_*` variable
    reported readably."""
    import pydantic

    from swarm.client.settings import Settings

    try:
        return Settings(**overrides)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{_variable(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise CliError(f"invalid setting: {problems}", code=EXIT_USAGE) from None


def _variable(loc: tuple[int | str, ...]) -> str:
    """The variable a validation error is about (aliased fields report their alias)."""
    name = "_".join(str(p) for p in loc).upper()
    return name if name.startswith("SWARM_") else f"SWARM_{name}"


def locate(option: str | None) -> tuple[NatsTarget, Settings]:
    """Where NATS is, then the settings: a verb that finds no stack says so before the settings
    (pydantic-settings: ~230 ms of a ~370 ms `swarm status` here, bench/cli.py) are read."""
    target = resolve_nats_url(option)
    return target, load_settings()


def resolve_nats_url(option: str | None, settings: Settings | None = None) -> NatsTarget:
    """Where NATS is: `--nats-url` > `SWARM_NATS_URL` > the chosen stack's state file.

    Without `settings` the variables are read straight from the environment."""
    if option:
        return _owned(NatsTarget(option, "--nats-url"), settings)
    url = settings.nats_url if settings is not None else os.environ.get(env.NATS_URL)
    if url:
        return _owned(NatsTarget(url, env.NATS_URL), settings)
    choice = discovery.choose(settings)
    path = choice.data_dir / STACK_STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CliError(
            _NO_STACK,
            code=EXIT_UNAVAILABLE,
            hint=f"looked in {choice.data_dir} ({choice.describe()})",
        ) from None
    except (OSError, ValueError) as exc:
        raise CliError(
            f"cannot read {path}: {exc}",
            code=EXIT_UNAVAILABLE,
            hint="restart the stack with `swarm up`, or pass --nats-url",
        ) from None
    url = state.get("nats_url") if isinstance(state, dict) else None
    if not isinstance(url, str) or not url:
        raise CliError(
            _NO_STACK,
            code=EXIT_UNAVAILABLE,
            hint=f"{path} names no NATS server ({choice.describe()})",
        )
    return _of_stack(NatsTarget(url, str(path)), state)


def _of_stack(target: NatsTarget, state: dict[str, Any]) -> NatsTarget:
    """`target` with the Hive key and the owner's NATS credentials the stack recorded; who set
    `SWARM_NATS_CREDENTIALS` (a user `swarm user add` issued a key to) connects as that."""
    key = state.get("hive_public_key")
    credentials = env.nats_credentials() or state.get("nats_credentials")
    ca = env.nats_ca() or state.get("nats_ca")
    return NatsTarget(
        target.url,
        target.origin,
        key if isinstance(key, str) and key else None,
        Path(credentials) if credentials else None,
        Path(ca) if ca else None,
    )


def _owned(target: NatsTarget, settings: Settings | None) -> NatsTarget:
    """A URL given outright that is the chosen stack's own server comes with what the stack
    recorded for it (its owner's credentials, its Hive's key): `--nats-url` copied from `swarm
    status` must not lock its owner out. Any other URL is taken as it is."""
    try:
        choice = discovery.choose(settings)
        state = json.loads((choice.data_dir / STACK_STATE_FILE).read_text())
    except (CliError, OSError, ValueError):
        return target
    if not isinstance(state, dict) or state.get("nats_url") != target.url:
        return target
    return _of_stack(target, state)


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """A PostgreSQL URL and where it was found (a flag, a variable or a stack's state file)."""

    url: str
    origin: str


def resolve_database_url(
    option: str | None, settings: Settings | None = None, *, data_dir: Path | None = None
) -> DatabaseTarget | None:
    """Where PostgreSQL is: `--database-url` > `SWARM_DATABASE_URL` > the chosen stack's state
    file (`data_dir` when the verb was given `--data-dir`); None when none of them says.

    Without `settings` the variables are read straight from the environment."""
    if option:
        return DatabaseTarget(option, "--database-url")
    url = settings.database_url if settings is not None else os.environ.get(env.DATABASE_URL)
    if url:
        return DatabaseTarget(url, env.DATABASE_URL)
    choice = discovery.choose(settings, flag=data_dir)
    path = choice.data_dir / STACK_STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    url = state.get("database_url") if isinstance(state, dict) else None
    if not isinstance(url, str) or not url:
        return None
    return DatabaseTarget(url, str(path))


async def connect(
    target: NatsTarget, settings: Settings | None = None, *, wait: float = 5.0
) -> EventLog:
    """An `EventLog` over a fresh connection; never creates or changes streams.

    Without `settings` they are read (`load_settings`) when first needed, if ever: a read verb
    needs none of them, and reading them (pydantic-settings) was ~55 ms of a `swarm agent ls`
    here (bench/cli.py).

    One reconnect attempt once connected: `EventLog.connect` reconnects without limit, which
    suits services but would leave a CLI hanging in silence when the server goes down.
    """
    from swarm.client.eventlog import CannotConnect, EventLog, connect_nats, describe

    _logs_to_stderr(settings)
    try:
        nc = await connect_nats(
            target.url,
            name="swarm-cli",
            timeout=wait,
            reconnects=1,
            credentials=target.credentials,
            ca=target.ca,
        )
    except CannotConnect as exc:
        raise CliError(
            f"cannot reach NATS at {target.url}: {describe(exc.cause)}",
            code=EXIT_UNAVAILABLE,
            hint=_hint(target),
        ) from None
    # The key it connected with signs its commands (`swarm.kernel.signing`).
    credentials = target.credentials or env.nats_credentials()
    if settings is None:
        return EventLog(
            nc,
            lambda: _with_stack_key(load_settings(), target),
            timeout=wait,
            credentials=credentials,
        )
    return EventLog(nc, _with_stack_key(settings, target), timeout=wait, credentials=credentials)


def _with_stack_key(settings: Settings, target: NatsTarget) -> Settings:
    """The settings, with the Hive's key the stack recorded beside the URL when they name none:
    then only sealed outcomes are taken."""
    if settings.hive_public_key is None and target.hive_public_key is not None:
        return settings.model_copy(update={"hive_public_key": target.hive_public_key})
    return settings


def _logs_to_stderr(settings: Settings | None) -> None:
    """The log lines of the layers below (a reconnect warning) go to stderr, warnings and up
    unless SWARM_LOG_LEVEL says otherwise: on stdout they would corrupt `-o json`. A process
    that configured logging itself (an embedding program, the tests) keeps its own.

    The settings are read only when a variable about logging is set (without `settings`), and
    structlog is configured only once something imports it (`configure_logging_on_import`)."""
    from swarm.client.lifecycle import configure_logging_on_import

    level_set, format_set = env.LOG_LEVEL in os.environ, env.LOG_FORMAT in os.environ
    if settings is None and (level_set or format_set):
        settings = load_settings()
    # Readable for a person unless asked otherwise: a piped CLI is still read by one.
    level = settings.log_level if settings is not None and level_set else "warning"
    fmt = settings.log_format if settings is not None and format_set else "console"
    try:
        configure_logging_on_import(level, fmt)
    except ValueError as exc:
        raise CliError(f"invalid setting: {env.LOG_LEVEL}: {exc}", code=EXIT_USAGE) from None


@asynccontextmanager
async def session(
    target: NatsTarget,
    settings: Settings | None = None,
    *,
    streams: Iterable[str] = (),
    wait: float = 5.0,
) -> AsyncIterator[EventLog]:
    """Connect, check that `streams` exist, and close on the way out whatever happened.

    Without `settings` they are read when first needed, if ever (see `connect`).

    A connection lost midway (the server stopped during `--follow`) becomes a readable error.
    """
    from swarm.client.eventlog import ConnectionLost, ScanError

    log = await connect(target, settings, wait=wait)
    try:
        for stream in streams:
            await require_stream(log, stream, target)
        yield log
    except ConnectionLost as exc:
        raise CliError(
            f"lost the connection to NATS at {target.url}: {exc}",
            code=EXIT_UNAVAILABLE,
        ) from None
    except ScanError as exc:
        raise CliError(f"reading the log failed: {exc}", code=EXIT_UNAVAILABLE) from None
    finally:
        await log.close()


@asynccontextmanager
async def client(
    nats_url: str | None,
    settings: Settings,
    *,
    streams: Iterable[str] = (),
    timeout: float | None = None,
) -> AsyncIterator[Swarm]:
    """A `Swarm` client as the CLI's user: it finds the stack and connects (a `session`) only
    when its first verb needs the server, so a command that is wrong is reported without one;
    a lagging Hive replica's note goes to stderr."""
    from swarm.cli.output import status
    from swarm.cli.publish import CLI_SOURCE
    from swarm.client.swarm import DEFAULT_TIMEOUT, Swarm

    async with AsyncExitStack() as stack:

        async def opener() -> EventLog:
            target = resolve_nats_url(nats_url, settings)
            return await stack.enter_async_context(session(target, settings, streams=streams))

        yield Swarm(
            opener,
            identity=settings.identity,
            source=CLI_SOURCE,
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
            on_stale=status,
        )


async def require_stream(log: EventLog, stream: str, target: NatsTarget) -> None:
    from swarm.client.eventlog import LogAdmin, NotFound

    try:
        await LogAdmin(log).stream(stream)
    except NotFound:
        raise CliError(
            f"stream {stream} does not exist on NATS at {target.url}",
            code=EXIT_UNAVAILABLE,
            hint="the Swarm streams are created by `swarm up` and by every Swarm service at start",
        ) from None
    except TimeoutError:  # RequestTimeout included
        raise CliError(
            f"NATS at {target.url} did not answer a JetStream request in time",
            code=EXIT_UNAVAILABLE,
            hint="is JetStream enabled on that server (`nats-server -js`)?",
        ) from None


def _hint(target: NatsTarget) -> str:
    if target.origin == "--nats-url":
        return "check the URL, or leave --nats-url out to use the stack started by `swarm up`"
    if target.origin == "SWARM_NATS_URL":
        return "check SWARM_NATS_URL, or unset it to use the stack started by `swarm up`"
    return f"the URL came from {target.origin}: is `swarm up` still running? (`swarm status`)"
