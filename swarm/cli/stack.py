"""`swarm up`, `swarm down`, `swarm status`: the local stack, driven like `docker compose`.

The development stack (`swarm.devstack.stack`) does the work and prints nothing; this module
picks the services, turns options into settings and shows what happens. Which stack a verb means,
from whatever directory it runs, is `swarm.cli.discovery`'s to say. The dev stack, the kernel,
nats-py and the models are imported by the verbs that use them: every `swarm` call imports this
module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from swarm.cli import discovery

if TYPE_CHECKING:
    from rich.status import Status

    from swarm.client.settings import Settings
    from swarm.devstack.stack import StackReport, StackState
    from swarm.devstack.supervisor import ServiceSpec


def token_urlsafe(nbytes: int) -> str:
    """A new secret: `secrets` (with `random`, ~12 ms) is imported by the verbs that make one,
    not by `swarm status`."""
    import secrets

    return secrets.token_urlsafe(nbytes)


def owner_credentials(state: StackState) -> Path | None:
    """The nkey seed file the stack's owner connects to NATS with, when it has one."""
    return Path(state.nats_credentials) if state.nats_credentials else None


def stack_ca(state: StackState) -> Path | None:
    """The CA the stack's NATS server certificate is verified against, when it has one."""
    return Path(state.nats_ca) if state.nats_ca else None


def default_services(
    data_dir: Path, *, hive_replicas: int = 1, pods: int = 1
) -> tuple[ServiceSpec, ...]:
    """The Swarm services `swarm up` supervises, each a module run by this interpreter.

    They are listed here, not in `swarm.devstack`, because the dev stack sits below the services
    and must not know which ones build on it. The Hive's Raft addresses and password are kept in
    the data dir so that a restart finds the same cluster (and its journal) again.
    """
    from swarm.devstack.supervisor import ServiceSpec

    cluster = hive_cluster(data_dir, hive_replicas)
    specs = []
    for i, addr in enumerate(cluster["addrs"]):
        peers = [a for a in cluster["addrs"] if a != addr]
        specs.append(
            ServiceSpec(
                f"hive-{i}" if hive_replicas > 1 else "hive",
                (sys.executable, "-m", "services.hive"),
                {
                    "SWARM_HIVE_RAFT_SELF": addr,
                    "SWARM_HIVE_RAFT_PEERS": json.dumps(peers),
                    # A file only the stack's user reads, not the environment (`ps e`, core
                    # dumps and every child of the Hive would see that).
                    "SWARM_HIVE_RAFT_PASSWORD_FILE": str(raft_password_file(data_dir, cluster)),
                    "SWARM_HIVE_DATA_DIR": str(data_dir / "hive" / f"replica-{i}"),
                    "SWARM_HIVE_NODE": f"hive-{i}",
                },
            )
        )
    specs.append(ServiceSpec("scheduler", (sys.executable, "-m", "services.scheduler")))
    # Refuses loopback and private targets unless SWARM_WEBHOOKS_ALLOW_PRIVATE=true is set in
    # the environment of `swarm up` (a receiver on this machine needs it).
    specs.append(ServiceSpec("webhooks", (sys.executable, "-m", "services.webhooks")))
    specs.append(ServiceSpec("observer", (sys.executable, "-m", "services.observer")))
    for i in range(pods):
        # One compiled-module cache for the machine's pods: one compiles a component, the others
        # read its file (runtime/components.py); replicas' scratch dirs go beside it.
        cache = data_dir / "pods" / "modules"
        specs.append(
            ServiceSpec(
                f"pod-{i}",
                (sys.executable, "-m", "runtime"),
                {"SWARM_POD_ID": f"pod-{i}", "SWARM_POD_CACHE_DIR": str(cache)},
            )
        )
    return tuple(specs)


def hive_cluster(data_dir: Path, replicas: int) -> dict[str, Any]:
    """Raft addresses and password of the local Hive, created on first use, reused after."""
    from swarm.devstack.embedded import free_port

    path = data_dir / "hive" / "cluster.json"
    cluster: dict[str, Any] = {}
    if path.exists():
        cluster = json.loads(path.read_text())
    addrs: list[str] = cluster.get("addrs", [])[:replicas]
    taken = {int(a.rsplit(":", 1)[1]) for a in addrs}
    # Keep earlier ports while they are free so replicas find their peers and journals again.
    addrs = [
        a if free_port(int(a.rsplit(":", 1)[1])) == int(a.rsplit(":", 1)[1]) else "" for a in addrs
    ]
    while len(addrs) < replicas:
        addrs.append("")
    for i, addr in enumerate(addrs):
        if not addr:
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            addrs[i] = f"127.0.0.1:{port}"
    cluster = {
        "addrs": addrs,
        "password": cluster.get("password") or token_urlsafe(24),
        # Behind the ids services derive for their commands (swarm.kernel.ids).
        "id_secret": cluster.get("id_secret") or token_urlsafe(32),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(cluster, indent=2))
    return cluster


def raft_password_file(data_dir: Path, cluster: dict[str, Any]) -> Path:
    """The file holding the Hive cluster's Raft password (0600), written from `cluster`."""
    from swarm.devstack.embedded import private_fd

    path = data_dir / "hive" / "raft-password"
    with open(private_fd(path, os.O_TRUNC), "w") as f:
        f.write(cluster["password"] + "\n")
    return path


def stack_keys(data_dir: Path) -> tuple[str | None, dict[str, str]]:
    """The Hive's public key and the environment every service of the stack shares: the key
    that checks the Hive's seal on outcomes and the secret behind derived command ids. Read from
    the cluster file `default_services` wrote; nothing before there is one."""
    from swarm.client.signing import SealKey

    path = data_dir / "hive" / "cluster.json"
    if not path.exists():
        return None, {}
    cluster = json.loads(path.read_text())
    public = SealKey.from_secret(cluster["password"]).public.text
    env = {"SWARM_HIVE_PUBLIC_KEY": public}
    if cluster.get("id_secret"):
        env["SWARM_COMMAND_ID_SECRET"] = cluster["id_secret"]
    return public, env


class SyncPolicy(StrEnum):
    ALWAYS = "always"
    DEFAULT = "default"


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

_STEP_TITLES = {
    "nats": "NATS",
    "postgres": "PostgreSQL",
    "streams": "Streams",
    "migrations": "Migrations",
    "services": "Services",
}

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="The stack's data dir: its data, logs and state. Default: $SWARM_HOME (or "
        "$SWARM_DATA_DIR), else the stack `swarm up` started last, else ./.swarm.",
        show_default=False,
    ),
]


UpDataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Where to keep the stack's data, logs and state. Default: $SWARM_HOME (or "
        "$SWARM_DATA_DIR), else ./.swarm. The stack started becomes the current one, which "
        "every verb finds from any directory.",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
    app.command("migrate")(migrate)


#: File in the data dir holding the HTTP API's bearer token (mode 0600).
API_TOKEN_FILE = "api-token"


def api_token_file(data_dir: Path) -> Path:
    """The API token's file, with a new random token when there is none yet (kept after, so a
    client's token stays valid across restarts); only its owner may read it."""
    path = data_dir / API_TOKEN_FILE
    if not path.exists() or not path.read_text().strip():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token_urlsafe(32) + "\n")
    path.chmod(0o600)
    return path


def gateway_service(data_dir: Path, port: int | None = None) -> tuple[ServiceSpec, str]:
    """The HTTP API as a supervised service, and its URL.

    Without `port`, the previous run's port when it is free (so URLs people copied keep
    working), else any free one. `SWARM_API_TOKEN`, when set, wins over the token file.
    """
    from swarm.devstack.embedded import free_port
    from swarm.devstack.stack import read_state
    from swarm.devstack.supervisor import ServiceSpec

    if port is None:
        previous = read_state(data_dir)
        before = urlsplit(previous.api_url).port if previous and previous.api_url else None
        port = free_port(before)
    elif port == 0:
        port = free_port()
    spec = ServiceSpec(
        "gateway",
        (sys.executable, "-m", "swarm.gateway"),
        {
            "SWARM_API_HOST": "127.0.0.1",
            "SWARM_API_PORT": str(port),
            "SWARM_API_TOKEN_FILE": str(api_token_file(data_dir)),
        },
    )
    return spec, f"http://127.0.0.1:{port}"


# --- up ------------------------------------------------------------------------------------------


def up(
    data_dir: UpDataDirOption = None,
    detach: Annotated[
        bool,
        typer.Option("--detach", "-d", help="Start in the background and return once ready."),
    ] = False,
    nats_url: Annotated[
        str | None,
        typer.Option(
            "--nats-url",
            envvar="SWARM_NATS_URL",
            help="Use this NATS server (with JetStream) instead of starting one.",
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="SWARM_DATABASE_URL",
            help="Use this PostgreSQL (with pgvector) instead of starting one.",
        ),
    ] = None,
    sync: Annotated[
        SyncPolicy | None,
        typer.Option(
            "--sync",
            envvar="SWARM_JETSTREAM_SYNC",
            help="JetStream fsync of the embedded NATS: 'always' survives power loss, "
            "'default' flushes periodically and is faster.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds --detach waits for the stack to be ready.")
    ] = 60.0,
    hive_replicas: Annotated[
        int,
        typer.Option(
            "--hive-replicas", min=1, max=7, help="Hive replicas forming the Raft cluster."
        ),
    ] = 1,
    pods: Annotated[
        int, typer.Option("--pods", min=0, max=64, help="Agent pods to run on this machine.")
    ] = 1,
    service: Annotated[
        list[str] | None,
        typer.Option(
            "--service",
            hidden=True,
            help="Also supervise NAME=COMMAND (repeatable); for development and tests.",
        ),
    ] = None,
    no_services: Annotated[
        bool,
        typer.Option("--no-services", hidden=True, help="Start only the servers (for tests)."),
    ] = False,
    demo: Annotated[
        bool,
        typer.Option("--demo", help="Once up, deploy the echo example agent (if not there yet)."),
    ] = False,
    api_port: Annotated[
        int | None,
        typer.Option(
            "--api-port",
            min=0,
            max=65535,
            help="Port of the HTTP API on 127.0.0.1 (0: any free one).",
            show_default="the previous run's when free, else any",
        ),
    ] = None,
) -> None:
    """Start NATS, PostgreSQL and the Swarm services; stay in the foreground until Ctrl-C.

    Once it is up, the stack is recorded as the current one, which verbs run from any directory
    find.
    """
    import asyncio
    import threading

    from swarm.cli.demo import deploy_demo
    from swarm.devstack.stack import Stack, StackAlreadyRunningError, StackError

    settings, choice = _choose(data_dir, nats_url, database_url, sync, recorded=False)
    _note_other_current(choice)
    if detach:
        state = _up_detached(
            settings, choice, service or [], timeout, hive_replicas, pods, no_services, api_port
        )
        if demo and state.nats_url:
            console.print(
                asyncio.run(
                    deploy_demo(
                        state.nats_url,
                        settings.identity,
                        credentials=owner_credentials(state),
                        ca=stack_ca(state),
                    )
                )
            )
        return
    own = (
        ()
        if no_services
        else default_services(settings.data_dir.resolve(), hive_replicas=hive_replicas, pods=pods)
    )
    api_url: str | None = None
    if not no_services:
        gateway, api_url = gateway_service(settings.data_dir.resolve(), api_port)
        own += (gateway,)
    services = own + tuple(_parse_service(s) for s in service or ())
    progress = _RichProgress(console)

    def ready(state: StackState) -> None:
        progress.close()
        # Recorded once it is up: a start that fails leaves the previous current stack current.
        _record_current(choice)
        _print_ready(state, detached=False)
        if demo and state.nats_url:
            # In a thread: the supervisor must keep watching its children while the Hive elects
            # itself and the deploy goes through.
            url, owner, ca = state.nats_url, owner_credentials(state), stack_ca(state)
            threading.Thread(
                target=lambda: console.print(
                    asyncio.run(deploy_demo(url, settings.identity, credentials=owner, ca=ca))
                ),
                name="demo",
                daemon=True,
            ).start()

    public_key, service_env = (None, {}) if no_services else stack_keys(settings.data_dir.resolve())
    try:
        # `closing`: the spinner must stop however `run` ends, and before an error is printed.
        with contextlib.closing(progress):
            stack = Stack(
                settings,
                services,
                progress=progress,
                api_url=api_url,
                hive_public_key=public_key,
                service_env=service_env,
            )
            final = stack.run(on_ready=ready)
    except StackAlreadyRunningError as exc:
        _print_already_running(exc.data_dir, exc.state)
        raise typer.Exit(1) from None
    except StackError as exc:
        err_console.print(f"[red]✗[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    console.print(f"Swarm stopped ({final.data_dir}).")


def _up_detached(
    settings: Settings,
    choice: discovery.StackChoice,
    extra_services: list[str],
    timeout: float,
    hive_replicas: int,
    pods: int,
    no_services: bool,
    api_port: int | None,
) -> StackState:
    from swarm.devstack.stack import StackError, StackPaths, inspect_stack, launch_detached

    paths = StackPaths.of(settings.data_dir)
    report = inspect_stack(paths.root, probe=False)
    if report.running:
        _print_already_running(paths.root, report.state)
        raise typer.Exit(1)
    argv = [sys.executable, "-m", "swarm.cli.stack", "up", "--data-dir", str(paths.root)]
    argv += ["--sync", settings.jetstream_sync, "--hive-replicas", str(hive_replicas)]
    argv += ["--pods", str(pods)]
    if no_services:
        argv.append("--no-services")
    if api_port is not None:
        argv += ["--api-port", str(api_port)]
    if settings.nats_url:
        argv += ["--nats-url", settings.nats_url]
    if settings.database_url:
        argv += ["--database-url", settings.database_url]
    for spec in extra_services:
        argv += ["--service", spec]
    try:
        with console.status("Starting Swarm in the background…"):
            state = launch_detached(argv, paths.root, timeout)
    except StackError as exc:
        err_console.print(f"[red]✗[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    # The background supervisor recorded it already; again here, where a failure can be seen.
    _record_current(choice)
    _print_ready(state, detached=True)
    return state


def _choose(
    data_dir: Path | None,
    nats_url: str | None = None,
    database_url: str | None = None,
    sync: SyncPolicy | None = None,
    *,
    recorded: bool = True,
) -> tuple[Settings, discovery.StackChoice]:
    """The settings a stack verb runs with, their data dir the stack `swarm.cli.discovery`
    picks (absolute), and that choice."""
    settings = _settings(data_dir, nats_url, database_url, sync)
    choice = discovery.choose(settings, flag=data_dir, recorded=recorded)
    return settings.model_copy(update={"data_dir": choice.data_dir}), choice


def _note_other_current(choice: discovery.StackChoice) -> None:
    """Say so when `swarm up` is about to start a stack beside the current one: verbs run
    elsewhere will find the new one from now on."""
    current = discovery.read_current()
    if current is None or current == choice.data_dir:
        return
    from swarm.devstack.stack import inspect_stack

    state = "runs" if inspect_stack(current, probe=False).running else "is stopped"
    err_console.print(
        f"[dim]note: the current stack, in {escape(str(current))}, {state}; this one in "
        f"{escape(str(choice.data_dir))} becomes the current one (`swarm up --data-dir "
        f"{escape(shlex.quote(str(current)))}` starts that one instead)[/]",
        soft_wrap=True,
    )


def _record_current(choice: discovery.StackChoice) -> None:
    """Make the stack being started the user's current one; a failure costs only that."""
    try:
        discovery.record_current(choice.data_dir)
    except (OSError, RuntimeError) as exc:  # RuntimeError: no home directory to be found
        err_console.print(
            f"[yellow]![/] could not record {escape(str(choice.data_dir))} as the current "
            f"stack ({escape(str(exc))}): verbs run from other directories will not find it "
            "unless SWARM_HOME names it"
        )


def _settings(
    data_dir: Path | None,
    nats_url: str | None = None,
    database_url: str | None = None,
    sync: SyncPolicy | None = None,
) -> Settings:
    from swarm.cli.connect import load_settings

    # Only what was given overrides the environment (SWARM_*), which Settings reads itself.
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if nats_url:
        overrides["nats_url"] = nats_url
    if database_url:
        overrides["database_url"] = database_url
    if sync is not None:
        overrides["jetstream_sync"] = sync.value
    return load_settings(**overrides)


def _parse_service(value: str) -> ServiceSpec:
    from swarm.devstack.supervisor import ServiceSpec

    name, sep, command = value.partition("=")
    try:
        if not sep:
            raise ValueError("expected NAME=COMMAND")
        return ServiceSpec(name.strip(), tuple(shlex.split(command)))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--service") from exc


class _RichProgress:
    """A spinner naming the step in progress, and a line per finished step."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self._status: Status | None = None

    def started(self, step: str) -> None:
        text = f"Starting {_STEP_TITLES.get(step, step)}…"
        if self._status is None:
            self._status = self.out.status(text)
            self._status.start()
        else:
            self._status.update(text)

    def finished(self, step: str, detail: str, seconds: float) -> None:
        title = _STEP_TITLES.get(step, step)
        self.out.print(
            f"[green]✓[/] {title:<11} {escape(detail)} [dim]({seconds * 1000:.0f} ms)[/]"
        )

    def close(self) -> None:
        """Stop the spinner; safe twice, as `up` closes it once the stack is ready and again
        however the stack ends."""
        if self._status is not None:
            self._status.stop()
            self._status = None


def _masked(url: str | None) -> str | None:
    """`url` with its password shown as `***` (`swarm status -o json` and the `export` line
    after `swarm up` give it whole: the stack's user may read it, a screen share should not)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _summary(state: StackState, out: Console) -> None:
    """Where everything listens. Plain lines, not a table: a table narrower than a URL would
    cut it, and these are meant to be copied."""
    nats_note = "external" if state.nats_external else f"pid {state.nats_pid}"
    if state.nats_credentials:
        nats_note += f", credentials (nkey seed) in {state.nats_credentials}"
    db_note = "external" if state.database_external else f"pid {state.postgres_pid}"
    rows = [
        ("NATS", state.nats_url or "-", nats_note),
        ("PostgreSQL", _masked(state.database_url) or "-", db_note),
        ("Data dir", state.data_dir, f"migrations at {state.migration or '-'}"),
    ]
    if state.api_url:
        rows.append(("HTTP API", state.api_url, _token_note(Path(state.data_dir))))
    rows += [
        (svc.name, svc.log, f"{svc.state.value}, pid {svc.pid or '-'}") for svc in state.services
    ]
    if not state.services:
        rows.append(("Services", "none configured yet", ""))
    width = max(len(name) for name, _, _ in rows)
    for name, value, note in rows:
        out.print(
            f"  [bold]{escape(name):<{width}}[/]  {escape(value)}  [dim]{escape(note)}[/]",
            soft_wrap=True,
        )


def _token_note(data_dir: Path) -> str:
    if os.environ.get("SWARM_API_TOKEN"):
        return "bearer token: $SWARM_API_TOKEN"
    return f"bearer token in {data_dir / API_TOKEN_FILE}"


def _data_dir_flag(data_dir: str) -> str:
    """` --data-dir DIR` when a verb run without it would pick another stack, else nothing."""
    from swarm.cli.connect import load_settings

    chosen = discovery.choose(load_settings()).data_dir
    return "" if Path(data_dir) == chosen else f" --data-dir {shlex.quote(data_dir)}"


def _print_ready(state: StackState, *, detached: bool) -> None:
    from swarm.devstack.stack import seconds_since_start
    from swarm.devstack.supervisor import ServiceState

    if detached:
        state = _settled(state)
    # What the user waited: since this command's process started (its imports, and for
    # `scripts/up` the install before the exec, included), not only the stack's own start.
    seconds = seconds_since_start(os.getpid())
    console.print(f"[bold green]Swarm is up[/] (pid {state.pid}, ready in {seconds:.1f} s)")
    _summary(state, console)
    starting = [svc.name for svc in state.services if svc.state is ServiceState.STARTING]
    if starting:
        console.print(
            f"[dim]Still starting: {', '.join(starting)}; `swarm status` shows when they run.[/]",
            soft_wrap=True,
        )
    env = f"SWARM_NATS_URL={state.nats_url} SWARM_DATABASE_URL={state.database_url}"
    if state.nats_credentials:
        env += f" SWARM_NATS_CREDENTIALS={state.nats_credentials}"
    if state.nats_ca:
        env += f" SWARM_NATS_CA={state.nats_ca}"
    console.print(
        f"[dim]`swarm` finds it from any directory; other clients with: export {escape(env)}[/]",
        soft_wrap=True,
    )
    if detached:
        flag = _data_dir_flag(state.data_dir)
        console.print(f"Running in the background. Stop it with: swarm down{flag}", soft_wrap=True)
    elif console.is_terminal:
        console.print("Press Ctrl-C to stop.")


def _settled(state: StackState, timeout: float = 15.0) -> StackState:
    """The stack's state once no service is still `starting` (the supervisor promotes one that
    stayed up a moment), or as it is after `timeout`: what is printed as running then runs."""
    import time

    from swarm.devstack.stack import StackPhase, read_state
    from swarm.devstack.supervisor import ServiceState

    deadline = time.monotonic() + timeout
    while any(svc.state is ServiceState.STARTING for svc in state.services):
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
        latest = read_state(Path(state.data_dir))
        if latest is None or latest.pid != state.pid or latest.phase is not StackPhase.RUNNING:
            break
        state = latest
    return state


def _print_already_running(data_dir: Path, state: StackState | None) -> None:
    pid = f" (pid {state.pid})" if state else ""
    err_console.print(f"[red]✗[/] Swarm is already running in {escape(str(data_dir))}{pid}.")
    if state is not None:
        _summary(state, err_console)
    err_console.print(f"Stop it with: swarm down{_data_dir_flag(str(data_dir))}", soft_wrap=True)


# --- down ----------------------------------------------------------------------------------------


def down(
    data_dir: DataDirOption = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", "-t", help="Seconds to wait for a clean stop before killing."),
    ] = 30.0,
) -> None:
    """Stop the stack started by `swarm up` (services, then PostgreSQL, then NATS).

    Which stack: as for every verb (see `swarm --help`); from any directory, the stack `swarm up`
    started last.
    """
    from swarm.devstack.stack import StackError, StopOutcome, stop_stack

    _, choice = _choose(data_dir)
    root = choice.data_dir
    try:
        with console.status("Stopping Swarm…"):
            outcome, state = stop_stack(root, timeout)
    except StackError as exc:
        err_console.print(f"[red]✗[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    # Like `docker compose down`: nothing to stop is not an error.
    if outcome is StopOutcome.NOT_RUNNING or state is None:
        console.print(
            f"No Swarm stack is running in {escape(str(root))} ({escape(choice.describe())})."
        )
        return
    kept = [
        name
        for name, external in (
            ("NATS", state.nats_external),
            ("PostgreSQL", state.database_external),
        )
        if external
    ]
    note = f" External {' and '.join(kept)} left running." if kept else ""
    if outcome is StopOutcome.KILLED:
        err_console.print(
            f"[yellow]![/] Swarm (pid {state.pid}) did not stop within {timeout:g} s and was "
            f"killed; its servers stopped with it.{note}"
        )
        return
    console.print(f"[green]✓[/] Swarm stopped (pid {state.pid}, {escape(str(root))}).{note}")


# --- migrate -------------------------------------------------------------------------------------


def migrate(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="PostgreSQL URL. Default: $SWARM_DATABASE_URL, else the database of the stack "
            "(see --data-dir).",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Bring the database schema up to date, as `swarm up` does before starting services.

    Without --database-url or SWARM_DATABASE_URL, the database of the running stack (the one
    `swarm status` shows). For deployments where the database is not the embedded one, e.g. the
    `migrate` one-shot service of docker-compose.yml. Safe to run concurrently and repeatedly.
    """
    from swarm.cli.connect import resolve_database_url
    from swarm.devstack.stack import StackError, inspect_stack, upgrade_database

    settings, choice = _choose(data_dir)
    found = resolve_database_url(database_url, settings, data_dir=choice.data_dir)
    if found is None:
        console.print(
            "[red]✗[/] no database: give --database-url, set SWARM_DATABASE_URL, or start a "
            f"stack with `swarm up` (none in {escape(str(choice.data_dir))}: "
            f"{escape(choice.describe())})"
        )
        raise typer.Exit(2)
    where = ""
    if found.origin not in ("--database-url", "SWARM_DATABASE_URL"):
        report = inspect_stack(choice.data_dir, probe=False)
        if not report.running and not (report.state and report.state.database_external):
            console.print(
                f"[red]✗[/] the stack in {escape(str(choice.data_dir))} is not running, and its "
                "PostgreSQL with it: start it with `swarm up`, or give --database-url"
            )
            raise typer.Exit(1)
        where = f" (the database of the stack in {choice.data_dir})"
    try:
        revision = upgrade_database(found.url)
    except StackError as exc:
        console.print(f"[red]✗[/] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    console.print(f"[green]✓[/] database schema at revision {escape(revision)}{escape(where)}")


# --- status --------------------------------------------------------------------------------------


def status(
    data_dir: DataDirOption = None,
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="table or json.")
    ] = OutputFormat.TABLE,
) -> None:
    """Show which stack this is, whether it runs, where it listens and how its services do.

    Exits 1 when no stack is running.
    """
    from swarm.devstack.stack import inspect_stack

    # Without reading the settings (pydantic-settings): status needs only where the stack is.
    choice = discovery.choose(None, flag=data_dir)
    report = inspect_stack(choice.data_dir)
    hive = _hive_view(report)
    if output is OutputFormat.JSON:
        selection = {"selected_by": choice.source.value, "selection": choice.describe()}
        typer.echo(json.dumps({**report.to_json(), **selection, "hive": hive}, indent=2))
    else:
        _print_status(report, choice)
        _print_hive(hive)
    if not report.running:
        raise typer.Exit(1)


def _hive_view(report: StackReport) -> list[dict[str, Any]] | None:
    """What each Hive replica of the stack says of itself (`swarm.query.hive.status.<node>`):
    leader, how far it folded the log, log entries it could not fold, commands given up."""
    state = report.state
    hives = [s for s in report.services if s.name == "hive" or s.name.startswith("hive-")]
    if state is None or not report.running or not state.nats_url or not hives:
        return None
    nodes = [f"hive-{i}" for i in range(len(hives))]
    import asyncio

    from schemas import names
    from swarm.client.eventlog import CannotConnect, EventLog, EventLogError, connect_nats

    async def ask() -> list[dict[str, Any]]:
        credentials = Path(state.nats_credentials) if state.nats_credentials else None
        try:
            nc = await connect_nats(
                state.nats_url or "",
                name="swarm-status",
                timeout=1.0,
                attempts=1,
                reconnects=0,
                credentials=credentials,
                ca=Path(state.nats_ca) if state.nats_ca else None,
            )
        except CannotConnect:
            return []
        # Signs its queries with the key it connected with: the Hive answers its principals.
        log = EventLog(nc, timeout=1.0, credentials=credentials)

        async def one(node: str) -> dict[str, Any]:
            try:
                reply = await log.request(f"{names.QUERY_STATUS}.{node}", b"{}", timeout=1.0)
                answer = json.loads(reply.data)
                if isinstance(answer, dict):
                    return {**answer, "node": node}
            except (EventLogError, TimeoutError, ValueError):
                pass
            return {"node": node, "ready": False, "unreachable": True}

        try:
            # All at once: a replica that does not answer costs one timeout, not one each.
            return list(await asyncio.gather(*(one(node) for node in nodes)))
        finally:
            with contextlib.suppress(EventLogError, OSError, TimeoutError):
                await log.close()

    return asyncio.run(ask())


def _print_hive(hive: list[dict[str, Any]] | None) -> None:
    if not hive:
        return
    leader = next((h["node"] for h in hive if h.get("is_leader")), None)
    folded = sorted({h.get("applied_seq", 0) for h in hive if not h.get("unreachable")})
    where = f"log folded to #{folded[-1]}" if folded else "no replica answered"
    console.print(f"Hive: leader {leader or '[yellow]none[/]'}, {where} ({len(hive)} replicas)")
    for h in hive:
        if h.get("unreachable"):
            console.print(f"  [yellow]⚠[/] {h['node']} does not answer")
    failures = max((h.get("fold_failures", 0) for h in hive), default=0)
    if failures:
        recent = next(h.get("recent_fold_failures") or [] for h in hive if h.get("fold_failures"))
        last = recent[-1] if recent else {}
        console.print(
            f"  [yellow]⚠[/] {failures} log entr{'y' if failures == 1 else 'ies'} could not be "
            f"folded (last: #{last.get('seq')} {escape(str(last.get('type')))}: "
            f"{escape(str(last.get('reason')))}); `swarm timeline verify` lists them"
        )
    given_up = sum(h.get("commands_dead_lettered", 0) for h in hive)
    if given_up:
        from schemas import names

        console.print(
            f"  [yellow]⚠[/] {given_up} command(s) given up and moved to "
            f"{names.STREAM_DEADLETTER} since the leader started"
        )


def _print_status(report: StackReport, choice: discovery.StackChoice) -> None:
    from swarm.devstack.supervisor import ServiceState

    state = report.state
    where = escape(str(report.data_dir))
    other = "--data-dir or SWARM_HOME picks another"
    which = f"[dim]Which stack: {escape(choice.describe())}. {other}.[/]"
    if state is None:
        console.print(f"No Swarm stack has run in {where}. Start one with: swarm up")
        console.print(which)
        return
    if not report.running:
        how = {
            "stopped": "stopped",
            "failed": f"failed: {state.error}",
            "dead": f"ended without cleaning up (pid {state.pid} is gone)",
        }.get(report.status, report.status)
        console.print(f"Swarm in {where} is not running; the last run {escape(how)}.")
        console.print(which)
        return
    age = _age(state.started_at)
    console.print(f"Swarm in {where}: [bold]{report.status}[/] (pid {state.pid}, up {age})")
    console.print(which)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("COMPONENT", "STATE", "PID", "ENDPOINT / LOG", "RESTARTS"):
        table.add_column(column, overflow="fold")
    for name, url, external, pid, reachable, restarts, error in (
        (
            "nats",
            state.nats_url,
            state.nats_external,
            state.nats_pid,
            report.nats_reachable,
            state.nats_restarts,
            state.nats_error,
        ),
        (
            "postgres",
            _masked(state.database_url),
            state.database_external,
            state.postgres_pid,
            report.database_reachable,
            state.postgres_restarts,
            state.postgres_error,
        ),
    ):
        server_state = "external" if external else "running"
        if not external and pid is None and url:
            # The supervisor is restarting it (stack.json says why).
            server_state = "[yellow]restarting[/]"
        elif reachable is False:
            server_state = "[red]unreachable[/]"
        pid_text = "-" if external else str(pid or "-")
        endpoint = escape(url or "-")
        if error and not external:
            endpoint += f" [dim](last: {escape(error)})[/]"
        table.add_row(name, server_state, pid_text, endpoint, "" if external else str(restarts))
    if state.api_url:
        table.add_row("api", "", "", escape(state.api_url), "")
    for svc in report.services:
        color = {ServiceState.RUNNING: "green", ServiceState.FAILED: "red"}.get(svc.state, "yellow")
        detail = svc.log if svc.state is not ServiceState.FAILED else f"{svc.error} ({svc.log})"
        table.add_row(
            svc.name,
            f"[{color}]{svc.state.value}[/]",
            str(svc.pid or "-"),
            escape(detail),
            str(svc.restarts),
        )
    console.print(table)
    if state.step:
        console.print(f"[dim]Starting: {state.step}…[/]")


def _age(since: datetime) -> str:
    seconds = int((datetime.now(UTC) - since).total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _main() -> None:
    """Run these verbs on their own (`python -m swarm.cli.stack`): how `up --detach` starts its
    background supervisor, without depending on every other command module importing."""
    app = typer.Typer(
        name="swarm", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
    )
    register(app)
    app()


if __name__ == "__main__":
    _main()
