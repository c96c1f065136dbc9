"""The local stack behind `swarm up`: servers, streams, schema and services under one data dir.

One supervisor process owns a data dir for as long as it runs. It proves that with an exclusive
`flock` on `<data_dir>/stack.lock`, which the kernel drops when the process dies however it dies,
so a crashed supervisor never blocks the next `swarm up`. What it is doing is published in
`<data_dir>/stack.json`, rewritten atomically on every change, which `swarm status` and
`swarm down` read; a state file whose writer is gone is stale, never authoritative.

Layout of a data dir::

    stack.json  stack.lock
    nats/       JetStream store, nats-server.conf, nats-server.log
    principals/ <name>.nk: the nkey seed each principal connects to NATS with (admin: the owner);
                principals.json lists them; api-tokens.json the users' HTTP API tokens, hashed
    tls/        ca.pem (what clients trust), ca-key.pem, nats.pem, nats-key.pem (`tls.py`)
    postgres/   pgdata/, postgres.log
    logs/       up.log (a detached supervisor's own output), <service>.log

Start order is nats, postgres, streams, migrations, services; stop order is the reverse, so
services can still flush to the log and the database while they shut down.

While it runs, the supervisor restarts a service that exits (`swarm.devstack.supervisor`) and an
embedded server that dies: on the same port with the same data dir, at once and then with a
growing delay, for as long as it takes, since everything else depends on it. Clients reconnect by
themselves. Each server restart is counted in `stack.json` (`swarm status` shows it).
"""

from __future__ import annotations

import _thread
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, Self
from urllib.parse import urlsplit

import psutil

from swarm.devstack.embedded import (
    AUTH_FILE,
    PRIVATE_UMASK,
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServerError,
    private_fd,
)
from swarm.devstack.supervisor import (
    RestartPolicy,
    ServiceSpec,
    ServiceState,
    ServiceStatus,
    Supervisor,
    describe_exit,
    log_note,
)
from swarm.kernel import env as env_names

if TYPE_CHECKING:
    # Only annotations here: pydantic-settings is ~100 ms of `swarm status` (bench/cli.py).
    from alembic.config import Config as AlembicConfig

    from swarm.kernel.settings import Settings

STATE_FORMAT = 1
_POLL_INTERVAL = 0.1

#: How an embedded server that died is restarted: at once, then after a doubling delay of up to
#: 10 s while restarts fail or it keeps dying; one that stayed up 30 s starts over. Never given
#: up: every service depends on the servers, and a port taken for a while may be free later.
SERVER_RESTARTS = RestartPolicy(initial_delay=0.1, factor=2.0, max_delay=10.0, reset_after=30.0)


class StackError(RuntimeError):
    """The stack could not start, or failed while running; the message says what to look at."""


class StackAlreadyRunningError(StackError):
    """Another supervisor holds the data dir."""

    def __init__(self, data_dir: Path, state: StackState | None) -> None:
        self.data_dir = data_dir
        self.state = state
        pid = f" (pid {state.pid})" if state else ""
        super().__init__(f"a Swarm stack is already running in {data_dir}{pid}")


class StackPhase(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StackPaths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "stack.json"

    @property
    def lock(self) -> Path:
        return self.root / "stack.lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def up_log(self) -> Path:
        return self.logs / "up.log"

    @property
    def nats(self) -> Path:
        return self.root / "nats"

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def principals(self) -> Path:
        """The NATS principals' nkey seeds (`swarm.devstack.principals`)."""
        return self.root / "principals"

    @property
    def tls(self) -> Path:
        """The stack's CA and the NATS server's certificate (`swarm.devstack.tls`)."""
        return self.root / "tls"

    @classmethod
    def of(cls, data_dir: Path) -> Self:
        return cls(data_dir.expanduser().resolve())

    def make_private(self) -> None:
        """Create the data dir readable by its owner only (logs, `stack.json`, the servers'
        data and the Raft journal are in it). An existing one is narrowed too: it is ours. As
        root, the embedded PostgreSQL runs as another user, who is then let through (o+x, no
        listing, `embedded.EmbeddedPostgres`)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.logs.mkdir(mode=0o700, exist_ok=True)


# --- state file ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StackState:
    """The content of `stack.json`."""

    data_dir: str
    pid: int
    #: With `pid`, tells the supervisor apart from a later process that got the same pid: when
    #: it started, in seconds after the machine booted (`started_after_boot`).
    pid_started: float | None
    phase: StackPhase
    started_at: datetime
    updated_at: datetime
    nats_url: str | None = None
    nats_external: bool = False
    nats_pid: int | None = None
    #: The nkey seed file the stack's owner connects with (`swarm.devstack.principals`): an
    #: embedded server admits the stack's principals alone.
    nats_credentials: str | None = None
    #: The CA certificate the embedded server's TLS certificate is verified against
    #: (`swarm.devstack.tls`): its listener speaks TLS alone.
    nats_ca: str | None = None
    jetstream_sync: str = "default"
    database_url: str | None = None
    database_external: bool = False
    postgres_pid: int | None = None
    #: How often the supervisor restarted an embedded server that died, and the last thing that
    #: went wrong with it (its exit, or why a restart failed); kept after it is back up.
    nats_restarts: int = 0
    nats_error: str | None = None
    postgres_restarts: int = 0
    postgres_error: str | None = None
    #: Alembic revision the database is at.
    migration: str | None = None
    #: What a starting stack is busy with.
    step: str | None = None
    error: str | None = None
    services: tuple[ServiceStatus, ...] = ()
    #: Where the HTTP API listens, when one of the services serves it.
    api_url: str | None = None
    #: The key that checks the Hive's seal on outcomes (`swarm.kernel.seal`), for clients.
    hive_public_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "data_dir": self.data_dir,
            "pid": self.pid,
            "pid_started": self.pid_started,
            "phase": self.phase.value,
            "step": self.step,
            "error": self.error,
            "started_at": self.started_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "nats_url": self.nats_url,
            "nats_external": self.nats_external,
            "nats_pid": self.nats_pid,
            "nats_credentials": self.nats_credentials,
            "nats_credentials_kind": "nkey-seed" if self.nats_credentials else None,
            "nats_ca": self.nats_ca,
            "jetstream_sync": self.jetstream_sync,
            "database_url": self.database_url,
            "database_external": self.database_external,
            "postgres_pid": self.postgres_pid,
            "nats_restarts": self.nats_restarts,
            "nats_error": self.nats_error,
            "postgres_restarts": self.postgres_restarts,
            "postgres_error": self.postgres_error,
            "migration": self.migration,
            "services": [s.to_json() for s in self.services],
            "api_url": self.api_url,
            "hive_public_key": self.hive_public_key,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            data_dir=str(data["data_dir"]),
            pid=int(data["pid"]),
            # A state file written before `pid_started` existed: the pid alone identifies it.
            pid_started=None if data.get("pid_started") is None else float(data["pid_started"]),
            phase=StackPhase(data["phase"]),
            started_at=datetime.fromisoformat(data["started_at"]),
            updated_at=datetime.fromisoformat(data["updated_at"]),
            nats_url=data.get("nats_url"),
            nats_external=bool(data.get("nats_external", False)),
            nats_pid=data.get("nats_pid"),
            nats_credentials=data.get("nats_credentials"),
            nats_ca=data.get("nats_ca"),
            jetstream_sync=str(data.get("jetstream_sync", "default")),
            database_url=data.get("database_url"),
            database_external=bool(data.get("database_external", False)),
            postgres_pid=data.get("postgres_pid"),
            nats_restarts=int(data.get("nats_restarts", 0)),
            nats_error=data.get("nats_error"),
            postgres_restarts=int(data.get("postgres_restarts", 0)),
            postgres_error=data.get("postgres_error"),
            migration=data.get("migration"),
            step=data.get("step"),
            error=data.get("error"),
            services=tuple(ServiceStatus.from_json(s) for s in data.get("services", ())),
            api_url=data.get("api_url"),
            hive_public_key=data.get("hive_public_key"),
        )


def read_state(data_dir: Path) -> StackState | None:
    """The last state a supervisor wrote to `data_dir`, or None when there is none (or it is
    unreadable, which only a hand edit can cause: writes are atomic)."""
    try:
        data = json.loads(StackPaths.of(data_dir).state.read_text())
        return StackState.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(path: Path, state: StackState) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(private_fd(tmp, os.O_TRUNC), "w") as f:
        f.write(json.dumps(state.to_json(), indent=2) + "\n")
    # rename is atomic: a reader sees the old file or the new one, never half of one.
    tmp.replace(path)


def started_after_boot(pid: int) -> float:
    """When process `pid` started, in seconds after boot on Linux: fixed for the process's life.

    Not psutil's `create_time()` there: it adds the boot time, which Linux derives from the
    current clock in whole seconds, so it moves by a second whenever the clock is stepped (seen
    in a VM under load: a live supervisor was reported `dead`). Elsewhere the start time the
    kernel keeps (psutil's `create_time()`), which does not move. Raises `psutil.Error` for a
    process that is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if Path("/proc/self/stat").exists():
            raise psutil.NoSuchProcess(pid) from None
        return float(psutil.Process(pid).create_time())
    # Field 22 (`starttime`, clock ticks since boot); the command name before it may hold spaces.
    return int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")


def seconds_since_start(pid: int) -> float:
    """How long process `pid` has run, to the clock tick: on Linux both ends are counted from
    boot (`started_after_boot`, /proc/uptime), not psutil's wall-clock start, which is off by up
    to a second (the boot time it adds is whole seconds). Raises `psutil.Error` for a process
    that is gone."""
    started = started_after_boot(pid)
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return time.time() - started  # no /proc: `started` is psutil's wall-clock start
    return max(0.0, uptime - started)


def _process_alive(pid: int, started: float | None = None) -> bool:
    """True while `pid` runs (zombies count as gone) and, if given, started at `started`
    (`started_after_boot`)."""
    try:
        proc = psutil.Process(pid)
        if started is not None and abs(started_after_boot(pid) - started) > 0.05:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --- inspecting and stopping a stack from outside ------------------------------------------------


@dataclass(frozen=True, slots=True)
class StackReport:
    """A stack as seen by `swarm status`: the state file checked against reality."""

    data_dir: Path
    state: StackState | None
    #: The supervisor process that wrote the state file is alive.
    running: bool
    nats_reachable: bool | None = None
    database_reachable: bool | None = None

    @property
    def status(self) -> str:
        """The phase of a live stack; `stopped`/`failed` for one that exited cleanly; `dead`
        when its supervisor vanished without cleaning up (SIGKILL); `absent` if none ever ran."""
        if self.state is None:
            return "absent"
        if self.running:
            return self.state.phase.value
        if self.state.phase in (StackPhase.STOPPED, StackPhase.FAILED):
            return self.state.phase.value
        return "dead"

    @property
    def services(self) -> tuple[ServiceStatus, ...]:
        """Service states, corrected for a supervisor that is gone (its children went with it)."""
        if self.state is None:
            return ()
        if self.running:
            return self.state.services
        return tuple(
            s
            if s.state is ServiceState.FAILED
            else replace(s, state=ServiceState.STOPPED, pid=None)
            for s in self.state.services
        )

    def to_json(self) -> dict[str, Any]:
        state = self.state
        return {
            "data_dir": str(self.data_dir),
            "running": self.running,
            "state": self.status,
            "pid": state.pid if state else None,
            "started_at": state.started_at.isoformat() if state else None,
            "nats_url": state.nats_url if state else None,
            "nats_external": state.nats_external if state else None,
            "nats_reachable": self.nats_reachable,
            "nats_credentials": state.nats_credentials if state else None,
            # What `nats_credentials` is: an nkey seed file (nats-py `nkeys_seed=`, `nats
            # --nkey`), not a `.creds` JWT file.
            "nats_credentials_kind": "nkey-seed" if state and state.nats_credentials else None,
            # The CA (PEM) that signed the server's TLS certificate: what a client verifies it
            # against (nats-py `tls=ssl.create_default_context(cafile=…)`).
            "nats_ca": state.nats_ca if state else None,
            "nats_pid": state.nats_pid if state else None,
            "nats_restarts": state.nats_restarts if state else 0,
            "nats_error": state.nats_error if state else None,
            "jetstream_sync": state.jetstream_sync if state else None,
            "database_url": state.database_url if state else None,
            "database_external": state.database_external if state else None,
            "database_reachable": self.database_reachable,
            "postgres_pid": state.postgres_pid if state else None,
            "postgres_restarts": state.postgres_restarts if state else 0,
            "postgres_error": state.postgres_error if state else None,
            "migration": state.migration if state else None,
            "error": state.error if state else None,
            "services": [s.to_json() for s in self.services],
            "api_url": state.api_url if state else None,
            "hive_public_key": state.hive_public_key if state else None,
        }


def _tcp_reachable(url: str | None, timeout: float = 0.3) -> bool | None:
    """Whether the first host:port of a URL accepts connections; None when it names no TCP
    endpoint (e.g. a Unix socket)."""
    if not url:
        return None
    try:
        parts = urlsplit(url.split(",")[0])
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or not port:
        return None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def inspect_stack(data_dir: Path, *, probe: bool = True) -> StackReport:
    """Read the state file and check it: is its supervisor alive, do its servers answer?"""
    paths = StackPaths.of(data_dir)
    state = read_state(paths.root)
    running = state is not None and _process_alive(state.pid, state.pid_started)
    if not (probe and running and state is not None):
        return StackReport(paths.root, state, running)
    return StackReport(
        paths.root,
        state,
        running,
        nats_reachable=_tcp_reachable(state.nats_url),
        database_reachable=_tcp_reachable(state.database_url),
    )


class StopOutcome(StrEnum):
    NOT_RUNNING = "not-running"
    STOPPED = "stopped"
    #: The supervisor did not stop in time and was SIGKILLed; its children die with it.
    KILLED = "killed"


def stop_stack(data_dir: Path, timeout: float = 30.0) -> tuple[StopOutcome, StackState | None]:
    """Ask the supervisor of `data_dir` to stop (SIGTERM) and wait up to `timeout` seconds for it
    to exit; SIGKILL it after that and wait for its servers to go."""
    report = inspect_stack(data_dir, probe=False)
    state = report.state
    if not report.running or state is None:
        return StopOutcome.NOT_RUNNING, state
    with contextlib.suppress(ProcessLookupError):
        os.kill(state.pid, signal.SIGTERM)
    if _wait_gone(lambda: _process_alive(state.pid, state.pid_started), timeout):
        return StopOutcome.STOPPED, read_state(data_dir)
    with contextlib.suppress(ProcessLookupError):
        os.kill(state.pid, signal.SIGKILL)
    _wait_gone(lambda: _process_alive(state.pid, state.pid_started), 5.0)
    _reap_leftovers(StackPaths.of(data_dir), state, timeout=10.0)
    return StopOutcome.KILLED, read_state(data_dir)


def _wait_gone(alive: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _leftover_servers(paths: StackPaths, previous: StackState | None) -> list[psutil.Process]:
    """Servers of an earlier supervisor on this data dir that are still alive.

    They are told apart from unrelated processes that reuse their pids by their command lines,
    which name this data dir's config and cluster.
    """
    candidates: list[tuple[int, str]] = []
    if previous is not None and previous.nats_pid and not previous.nats_external:
        candidates.append((previous.nats_pid, str(paths.nats / "nats-server.conf")))
    pgdata = paths.postgres / "pgdata"
    with contextlib.suppress(OSError, ValueError, IndexError):
        candidates.append((int((pgdata / "postmaster.pid").read_text().split()[0]), str(pgdata)))
    found: list[psutil.Process] = []
    for pid, marker in candidates:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and marker in proc.cmdline():
                found.append(proc)
    return found


def _reap_leftovers(paths: StackPaths, previous: StackState | None, timeout: float) -> None:
    """Wait for (and if need be stop) servers a dead supervisor left behind.

    After a SIGKILL they got their parent-death signal and are shutting down; a new server on
    the same store before they are gone would find the data in use.
    """
    leftovers = _leftover_servers(paths, previous)
    if not leftovers:
        return
    _, alive = psutil.wait_procs(leftovers, timeout=timeout / 2)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            # SIGINT is postgres' fast shutdown and a clean exit for nats-server.
            proc.send_signal(signal.SIGINT)
    _, alive = psutil.wait_procs(alive, timeout=timeout / 2)
    if alive:
        pids = ", ".join(str(p.pid) for p in alive)
        raise StackError(f"servers of an earlier run on {paths.root} do not stop (pids {pids})")


# --- database migrations -------------------------------------------------------------------------


def migrations_dir() -> Path:
    """The Alembic scripts, `migrations/` next to the `swarm` package (a source checkout or an
    editable install)."""
    import swarm

    path = Path(swarm.__file__).resolve().parent.parent / "migrations"
    if not (path / "env.py").is_file():
        raise StackError(
            f"database migrations not found at {path}: run Swarm from a source checkout "
            "or an editable install (pip install -e .)"
        )
    return path


def sqlalchemy_url(url: str) -> str:
    """A libpq-style URL with the psycopg 3 driver named, as SQLAlchemy wants it."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    return url


def alembic_config(database_url: str) -> AlembicConfig:
    """An Alembic config built in code, so no alembic.ini has to be found from the CWD."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    # Handed over as an attribute, not an option: options go through configparser
    # interpolation, which would mangle a '%' in a password.
    config.attributes["database_url"] = sqlalchemy_url(database_url)
    return config


def upgrade_database(database_url: str) -> str:
    """Apply every pending migration; returns the revision the database is now at."""
    from alembic import command
    from alembic.script import ScriptDirectory

    config = alembic_config(database_url)
    command.upgrade(config, "head")
    return ScriptDirectory.from_config(config).get_current_head() or ""


def _check_database(url: str) -> None:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5):
            pass
    except psycopg.Error as exc:
        raise StackError(f"cannot reach the database at {url}: {exc}".strip()) from exc


# --- streams -------------------------------------------------------------------------------------


async def _ensure_streams(
    url: str, settings: Settings, credentials: Path | None, ca: Path | None
) -> None:
    from swarm.kernel.connection import CannotConnect, connect_nats
    from swarm.kernel.eventlog import EventLog

    try:
        # Bounded attempts: an unreachable server must fail `swarm up`, not hang it.
        nc = await connect_nats(
            url, name="swarm-up", timeout=5, reconnects=0, credentials=credentials, ca=ca
        )
    except CannotConnect as exc:
        raise StackError(str(exc)) from exc
    log = EventLog(nc, settings)
    try:
        await log.ensure_streams()
    finally:
        await log.close()


# --- the supervisor ------------------------------------------------------------------------------


class StackProgress(Protocol):
    """Told about each start step, e.g. to show a spinner; the stack itself prints nothing."""

    def started(self, step: str) -> None: ...

    def finished(self, step: str, detail: str, seconds: float) -> None: ...


class _Lock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> bool:
        # Python opens files close-on-exec, so no child server inherits (and prolongs) the lock.
        f = open(private_fd(self.path, os.O_APPEND), "a+")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        self._file = f
        return True

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _port_of(url: str | None) -> int:
    try:
        return urlsplit(url or "").port or 0
    except ValueError:
        return 0


def stop_on_signal(stop: threading.Event) -> Callable[[int, object], None]:
    """A signal handler that sets `stop`, from another thread.

    Python runs a handler on the main thread between two bytecodes, wherever that thread is:
    also inside `stop.wait()` while it holds the event's lock (on the way in and out of each
    0.1 s poll of `supervise`). `stop.set()` there would wait for that lock forever. Seen once
    under load: `swarm down` waited 30 s and killed a supervisor that never began to stop.
    The thread is started with the documented low-level `_thread` API: `threading.Thread.start`
    takes module locks of its own that the interrupted thread may hold as well."""

    def request_stop(signum: int, frame: object) -> None:
        _thread.start_new_thread(stop.set, ())

    return request_stop


@dataclass
class Stack:
    """Servers and services of one data dir, in this process.

    `start()` then `supervise()` until asked to stop, then `stop()`; `run()` does all three
    with SIGINT/SIGTERM/SIGHUP as the stop request. `stop()` is safe before `start()` and twice.
    Must run on the main thread: children die with the thread that started them.
    """

    settings: Settings
    services: Sequence[ServiceSpec] = ()
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    progress: StackProgress | None = None
    #: Seconds services get to exit after SIGTERM before they are killed.
    stop_timeout: float = 10.0
    #: When to restart an embedded server that died.
    server_policy: RestartPolicy = SERVER_RESTARTS
    #: Where one of `services` serves the HTTP API, recorded in the state file for clients.
    api_url: str | None = None
    #: The Hive's public key, recorded in the state file for clients.
    hive_public_key: str | None = None
    #: Environment every service gets on top of the servers' URLs (shared keys, secrets).
    service_env: Mapping[str, str] = field(default_factory=dict)

    paths: StackPaths = field(init=False)
    _lock: _Lock | None = field(default=None, init=False)
    _nats: EmbeddedNats | None = field(default=None, init=False)
    _postgres: EmbeddedPostgres | None = field(default=None, init=False)
    _supervisor: Supervisor | None = field(default=None, init=False)
    _state: StackState | None = field(default=None, init=False)
    #: Principal name (service name, or `admin`) -> its nkey seed file, once NATS is started.
    _credentials: dict[str, Path] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.paths = StackPaths.of(self.settings.data_dir)

    @property
    def state(self) -> StackState | None:
        return self._state

    def run(self, on_ready: Callable[[StackState], None] | None = None) -> StackState:
        """Start, call `on_ready`, supervise until a stop signal, stop. Returns the final state;
        raises `StackError` if the stack could not start or failed while running."""
        stop = threading.Event()
        # Installed before starting, so a signal during start-up still ends in a clean stop.
        request_stop = stop_on_signal(stop)
        previous = {
            sig: signal.signal(sig, request_stop)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            state = self.start(cancel=stop)
            if on_ready is not None and state.phase is StackPhase.RUNNING:
                on_ready(state)
            self.supervise(stop)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        assert self._state is not None
        return self._state

    def start(self, cancel: threading.Event | None = None) -> StackState:
        """Bring everything up, in order. When `cancel` is set meanwhile, what was started is
        stopped again after the current step and the stopped state is returned."""
        if self._lock is not None:
            raise StackError("this stack is already started")
        self.paths.make_private()
        lock = _Lock(self.paths.lock)
        if not lock.acquire():
            raise StackAlreadyRunningError(self.paths.root, read_state(self.paths.root))
        previous = read_state(self.paths.root)
        now = datetime.now(UTC)
        try:
            me = psutil.Process()
            self._state = StackState(
                data_dir=str(self.paths.root),
                pid=me.pid,
                pid_started=started_after_boot(me.pid),
                phase=StackPhase.STARTING,
                started_at=now,
                updated_at=now,
                jetstream_sync=self.settings.jetstream_sync,
            )
            self._save()
        except BaseException:
            # Nothing started yet, and no state to record a failure in: the error as it is.
            lock.release()
            raise
        self._lock = lock
        steps: list[tuple[str, Callable[[], str]]] = [
            ("nats", lambda: self._start_nats(previous)),
            ("postgres", lambda: self._start_postgres(previous)),
            ("streams", self._create_streams),
            ("migrations", self._migrate),
            ("services", self._start_services),
        ]
        try:
            _reap_leftovers(self.paths, previous, timeout=10.0)
            for name, action in steps:
                if cancel is not None and cancel.is_set():
                    self.stop()
                    assert self._state is not None
                    return self._state
                self._step(name, action)
        except BaseException as exc:
            error = str(exc) if isinstance(exc, StackError | EmbeddedServerError) else repr(exc)
            self._save(phase=StackPhase.FAILED, error=error, step=None)
            self.stop()
            if isinstance(exc, StackError | KeyboardInterrupt):
                raise
            raise StackError(error) from exc
        return self._save(phase=StackPhase.RUNNING, step=None)

    def supervise(self, stop: threading.Event, interval: float = _POLL_INTERVAL) -> None:
        """Keep services and embedded servers running until `stop` is set.

        A server that dies is started again on its port and data dir (`server_policy`), on this
        thread, so it gets the same parent-death signal as the first one; while it is down its
        pid in the state file is None, and each restart is counted there.
        """
        watches = [
            _ServerWatch(field, label, server, self.server_policy, time.monotonic())
            for field, label, server in (
                ("nats", "nats-server", self._nats),
                ("postgres", "postgres", self._postgres),
            )
            if server is not None
        ]
        while not stop.wait(interval):
            if self._supervisor is not None:
                self._supervisor.poll()
            for watch in watches:
                changes = watch.poll(time.monotonic())
                if changes:
                    self._save(**changes)

    def stop(self) -> None:
        """Services first, then postgres, then nats; then the data dir is free again."""
        if self._lock is None:
            return
        failed = self._state is not None and self._state.phase is StackPhase.FAILED
        if not failed:
            self._save(phase=StackPhase.STOPPING)
        try:
            if self._supervisor is not None:
                self._supervisor.stop(self.stop_timeout)
            if self._postgres is not None:
                self._postgres.stop()
            if self._nats is not None:
                self._nats.stop()
        finally:
            self._save(phase=StackPhase.FAILED if failed else StackPhase.STOPPED, step=None)
            self._lock.release()
            self._lock = None

    # -- steps ------------------------------------------------------------------------------------

    def _step(self, name: str, action: Callable[[], str]) -> None:
        self._save(step=name)
        if self.progress is not None:
            self.progress.started(name)
        began = time.monotonic()
        detail = action()
        if self.progress is not None:
            self.progress.finished(name, detail, time.monotonic() - began)

    def _start_nats(self, previous: StackState | None) -> str:
        external = self.settings.nats_url
        if external:
            self._save(nats_url=external, nats_external=True, jetstream_sync="external")
            return f"{external} (external)"
        # The previous run's port when it is free, so URLs people copied keep working.
        port = _port_of(previous.nats_url) if previous and not previous.nats_external else 0
        from swarm.devstack import tls
        from swarm.devstack.principals import ADMIN, issue, role_of, write_authorization

        principals = issue(
            self.paths.principals,
            [(ADMIN, ADMIN), *((s.name, role_of(s.name)) for s in self.services)],
        )
        self._credentials = {p.name: p.seed_file for p in principals}
        self.paths.nats.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_authorization(self.paths.nats / AUTH_FILE, principals)
        certificates = tls.issue(self.paths.tls)
        self._nats = EmbeddedNats(
            self.paths.nats,
            port=port,
            sync_always=self.settings.jetstream_sync == "always",
            authorize=True,
            tls=(certificates.server_cert, certificates.server_key),
        )
        url = self._nats.start()
        self._save(
            nats_url=url,
            nats_pid=self._nats.pid,
            nats_credentials=str(self._credentials[ADMIN]),
            nats_ca=str(certificates.ca_cert),
        )
        return f"{url} (JetStream sync: {self.settings.jetstream_sync})"

    def _start_postgres(self, previous: StackState | None) -> str:
        external = self.settings.database_url
        if external:
            _check_database(external)
            self._save(database_url=external, database_external=True)
            return f"{external} (external)"
        port = _port_of(previous.database_url) if previous and not previous.database_external else 0
        self._postgres = EmbeddedPostgres(self.paths.postgres, port=port)
        url = self._postgres.start()
        self._save(database_url=url, postgres_pid=self._postgres.pid)
        return url

    def _create_streams(self) -> str:
        from swarm.kernel.streams import stream_specs

        url = self._state.nats_url if self._state else None
        assert url is not None
        import asyncio  # here: `swarm status` reads a stack without an event loop

        ca = self._state.nats_ca if self._state else None
        asyncio.run(
            _ensure_streams(
                url, self.settings, self._credentials.get("admin"), Path(ca) if ca else None
            )
        )
        return ", ".join(spec.name for spec in stream_specs(self.settings))

    def _migrate(self) -> str:
        url = self._state.database_url if self._state else None
        assert url is not None
        try:
            revision = upgrade_database(url)
        except StackError:
            raise
        except Exception as exc:
            raise StackError(f"database migration failed: {exc}") from exc
        self._save(migration=revision)
        return f"at revision {revision}"

    def _start_services(self) -> str:
        assert self._state is not None
        env = {
            **os.environ,
            "SWARM_NATS_URL": self._state.nats_url or "",
            "SWARM_DATABASE_URL": self._state.database_url or "",
            "SWARM_DATA_DIR": str(self.paths.root),
            **self.service_env,
        }
        if self._state.nats_ca:
            # Every service verifies the embedded server against the stack's CA.
            env[env_names.NATS_CA] = self._state.nats_ca
        # Each service connects as itself (an embedded server admits no one else), and the
        # Hive takes only commands the stack's principals signed.
        services = tuple(
            replace(s, env={**s.env, **self._identity_env(s.name)}) for s in self.services
        )
        self._supervisor = Supervisor(
            services,
            log_dir=self.paths.logs,
            env=env,
            policy=self.policy,
            on_change=lambda statuses: self._save(services=tuple(statuses)),
        )
        self._supervisor.start()
        if self.api_url is not None:
            self._save(api_url=self.api_url)
        if self.hive_public_key is not None:
            self._save(hive_public_key=self.hive_public_key)
        return ", ".join(s.name for s in self.services) or "none configured"

    def _identity_env(self, service: str) -> dict[str, str]:
        """What a service needs to be itself on the stack's NATS: its credentials, for a Hive
        replica the list of principals whose commands and queries it takes, for a pod the same
        list, whose mesh messages alone reach its agents, for the HTTP API the same list, whose
        users' tokens it takes (their digests and seeds beside it), and for the scheduler the
        same list, whose queries of its market it answers. Nothing with a NATS server the
        stack did not start (its operator says who may connect)."""
        seed = self._credentials.get(service)
        if seed is None:
            return {}
        from swarm.devstack.principals import LISTING, role_of

        out = {env_names.NATS_CREDENTIALS: str(seed)}
        role = role_of(service)
        if role == "hive":
            out[env_names.HIVE_PRINCIPALS_FILE] = str(seed.parent / LISTING)
        elif role == "pod":
            out[env_names.POD_PRINCIPALS_FILE] = str(seed.parent / LISTING)
            # A pod's heartbeats, metrics, logs and probe are bound to its principal's name.
            out[env_names.POD_ID] = service
        elif role == "gateway":
            out[env_names.API_PRINCIPALS_FILE] = str(seed.parent / LISTING)
        elif service == "scheduler":
            # Its market's queries are answered as their signers' (`swarm.kernel.queryguard`).
            out[env_names.SCHEDULER_PRINCIPALS_FILE] = str(seed.parent / LISTING)
        return out

    def _save(self, **changes: Any) -> StackState:
        assert self._state is not None
        self._state = replace(self._state, updated_at=datetime.now(UTC), **changes)
        _write_state(self.paths.state, self._state)
        return self._state


@dataclass
class _ServerWatch:
    """Notices that an embedded server died and restarts it, backing off while that fails.

    `poll` returns the state-file fields that changed (`<field>_pid`, `_restarts`, `_error`).
    """

    field: str
    label: str
    server: EmbeddedNats | EmbeddedPostgres
    policy: RestartPolicy
    started_at: float
    failures: int = 0
    restarts: int = 0
    #: When the next restart is due; None while the server runs.
    next_start: float | None = None

    def poll(self, now: float) -> dict[str, Any]:
        server = self.server
        if self.next_start is None:
            if server.proc is None or server.running():
                return {}
            error = f"{self.label} {describe_exit(server.proc.returncode)}"
            failures = self.policy.failures_after(self.failures, now - self.started_at)
            return self._retry_later(now, error, failures)
        if now < self.next_start:
            return {}
        self._note(f"restarting on {server.url}")
        try:
            server.restart()
        except EmbeddedServerError as exc:
            failed = f"{self.label} restart failed: {exc}"
            # Never up, so never long enough to start a new row of failures.
            return self._retry_later(time.monotonic(), failed, self.failures + 1)
        self.next_start = None
        self.restarts += 1
        self.started_at = time.monotonic()
        self._note(f"restarted (pid {server.pid}, restart {self.restarts})")
        return {f"{self.field}_pid": server.pid, f"{self.field}_restarts": self.restarts}

    def _retry_later(self, now: float, error: str, failures: int) -> dict[str, Any]:
        self.failures = failures
        delay = self.policy.delay(self.failures)
        self.next_start = now + delay
        self._note(f"{error}; restarting in {delay:g}s")
        return {f"{self.field}_pid": None, f"{self.field}_error": error}

    def _note(self, line: str) -> None:
        log_note(self.server.log_path, self.label, line)


# --- running a supervisor in the background ------------------------------------------------------


def launch_detached(argv: Sequence[str], data_dir: Path, timeout: float = 60.0) -> StackState:
    """Run `argv` (a foreground `swarm up` for `data_dir`) in a session of its own, with its
    output in `<data_dir>/logs/up.log`, and wait until it reports the stack running.

    Raises `StackError` carrying the tail of what it logged if it exits or fails first.
    """
    paths = StackPaths.of(data_dir)
    paths.make_private()
    with open(private_fd(paths.up_log), "ab") as log_file:
        offset = log_file.tell()
        # A new session: the terminal's Ctrl-C and hang-up no longer reach it.
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=PRIVATE_UMASK,
        )
    deadline = time.monotonic() + timeout
    while True:
        state = read_state(paths.root)
        mine = state is not None and state.pid == proc.pid
        if mine and state is not None and state.phase is StackPhase.RUNNING:
            return state
        if proc.poll() is not None or (
            mine and state is not None and state.phase is StackPhase.FAILED
        ):
            proc.wait()
            raise StackError(
                f"the stack exited with code {proc.returncode}; {paths.up_log} says:\n"
                + _log_tail(paths.up_log, offset)
            )
        if time.monotonic() >= deadline:
            proc.terminate()
            raise StackError(
                f"the stack was not ready within {timeout:g}s; {paths.up_log} says:\n"
                + _log_tail(paths.up_log, offset)
            )
        time.sleep(0.05)


def _log_tail(path: Path, offset: int, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"
