"""`swarm user`: the people a stack's NATS admits, each with a key of their own.

A user is a principal of role `user` (`swarm.devstack.principals`): an nkey whose seed this
command writes into the stack's data dir (`principals/<name>.nk`, 0600) for its owner to hand
over; with it the user connects (`SWARM_NATS_CREDENTIALS`) and signs commands, which the Hive
takes as `user:<name>` alone. The running server reads who it admits again at once (SIGHUP), and
the Hive reads the listing again when it changed; `rotate` replaces a user's key (the old one is
refused from then on, and its connections closed) and `rm` removes the user.

What a user may do is its roles (`grant`, `revoke`; `add --role`): `viewer`, `operator` or
`admin` in one namespace or in every one, recorded on the log (`swarm.cmd.access.grant`) and
checked by the Hive on every command the user signs (rule `access`). A user with no role sends
nothing the Hive carries out.

A user may also hold a token for the HTTP API (`token`; `add --api-token`): `swarm_…`, printed
once, kept only as its sha256 (`swarm.devstack.apitokens`). The API acts for its bearer as that
user, signing with the user's key, so the same roles apply there. `token` replaces the token
(the old one is refused at once), `token --revoke` takes it back, and `rm` and `rotate` revoke
it with the key (`rotate --api-token` issues a new one).
"""

from __future__ import annotations

import enum
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from swarm.cli import connect, discovery
from swarm.cli.output import (
    EXIT_NO_OUTCOME,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    Format,
    emit,
    errors_to_exit,
)
from swarm.cli.verbs import OutputOption, TimeoutOption, change

if TYPE_CHECKING:
    from schemas.views import GrantView
    from swarm.devstack.principals import Principal

app = typer.Typer(help="Add, rotate and remove the users a stack admits.", no_args_is_help=True)
key_app = typer.Typer(
    help="Rotate the NATS keys of a stack's services and of its owner.", no_args_is_help=True
)
console = Console(highlight=False, soft_wrap=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="The stack's data dir (default: the stack `swarm up` started last).",
        show_default=False,
    ),
]
NameArgument = Annotated[str, typer.Argument(help="The user's name (letters, digits, _ and -).")]


class Role(enum.StrEnum):
    """`schemas.specs.ACCESS_ROLES`, as the CLI offers them (a test keeps the two equal)."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


NamespaceOption = Annotated[
    str,
    typer.Option("--namespace", "-n", help="Where the role applies."),
]
AllNamespacesOption = Annotated[
    bool,
    typer.Option("--all-namespaces", "-A", help="The role applies in every namespace."),
]


def _where(namespace: str, all_namespaces: bool) -> str | None:
    return None if all_namespaces else namespace


def _scope(namespace: str | None) -> str:
    return f"namespace {namespace}" if namespace is not None else "every namespace"


def _grant(
    name: str,
    role: Role,
    namespace: str | None,
    *,
    timeout: float,
    output: Format,
    nats_url: str | None,
) -> None:
    change(
        lambda swarm: swarm.access.grant(name, role.value, namespace=namespace),
        what=f"granting {role.value} to {name}",
        done=f"user {name} is {role.value} in {_scope(namespace)}",
        namespace=namespace or "default",
        timeout=timeout,
        output=output,
        nats_url=nats_url,
    )


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="user")
    root.add_typer(key_app, name="key")


def _stack(data_dir: Path | None) -> tuple[Path, dict[str, object]]:
    """The chosen stack's data dir and its state; a stack on a NATS server it did not start
    has no users of its own to manage."""
    choice = discovery.choose(None, flag=data_dir)
    path = choice.data_dir / discovery.STACK_STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        raise CliError(
            f"no Swarm stack in {choice.data_dir}",
            code=EXIT_UNAVAILABLE,
            hint=f"{choice.describe()}; start one with `swarm up`",
        ) from None
    if (
        not isinstance(state, dict)
        or state.get("nats_external")
        or not state.get("nats_credentials")
    ):
        raise CliError(
            f"the stack in {choice.data_dir} uses a NATS server it did not start",
            code=EXIT_USAGE,
            hint="who may connect there is its operator's configuration",
        )
    return choice.data_dir, state


_Edited = TypeVar("_Edited")


def _edit(
    data_dir: Path | None,
    edit: Callable[[Path, str], _Edited],
    name: str,
    *,
    hint: str | None = None,
) -> tuple[Path, dict[str, object], _Edited]:
    """Apply a change of `swarm.devstack.principals` (add, rotate, remove) to principal `name`
    of the chosen stack: its data dir, its state and what `edit` returned. The change's
    ValueError (the name taken, or unknown) is a usage error, with `hint`."""
    from swarm.devstack.stack import StackPaths

    root, state = _stack(data_dir)
    try:
        return root, state, edit(StackPaths.of(root).principals, name)
    except ValueError as exc:
        raise CliError(str(exc), code=EXIT_USAGE, hint=hint) from None


def _apply(data_dir: Path, state: dict[str, object]) -> str:
    """Write who the server admits, and tell a running server to read it again."""
    from swarm.devstack.embedded import AUTH_FILE
    from swarm.devstack.principals import load, write_authorization
    from swarm.devstack.stack import StackPaths

    paths = StackPaths.of(data_dir)
    principals = list(load(paths.principals / "principals.json").values())
    write_authorization(paths.nats / AUTH_FILE, principals)
    pid = state.get("nats_pid")
    if isinstance(pid, int) and _is_server(pid, paths.nats / "nats-server.conf"):
        os.kill(pid, signal.SIGHUP)
        return "the stack's NATS server admits them now"
    return "the stack's NATS server is not running: it admits them when it starts"


def _is_server(pid: int, config: Path) -> bool:
    """Whether `pid` is the nats-server running on `config`: a state file a crashed stack left
    may name a pid that another process has now, and SIGHUP would end that one."""
    import psutil

    try:
        return str(config) in psutil.Process(pid).cmdline()
    except psutil.Error:
        return False


def _issue_token(root: Path, name: str, state: dict[str, object], output: Format) -> None:
    """Issue `name` a new API token and show it, this once."""
    from swarm.devstack.apitokens import issue_token
    from swarm.devstack.stack import StackPaths

    try:
        token = issue_token(StackPaths.of(root).principals, name)
    except ValueError as exc:
        raise CliError(str(exc), code=EXIT_USAGE, hint="`swarm user ls` lists them") from None
    url = state.get("api_url")
    api = url if isinstance(url, str) and url else None
    if output != Format.TABLE:
        emit({"user": name, "token": token, "api_url": api}, output)
        return
    console.print(
        f"[green]✓[/] user {escape(name)} has a new API token; "
        "any it had before is refused from now on"
    )
    # Printed apart, with nothing around it, to be copied whole.
    print(token)
    where = f" to {escape(api)}" if api else ""
    console.print(
        f"  [dim]shown this once (only its hash is kept); {escape(name)} sends it as "
        f"`Authorization: Bearer <token>`{where}[/]"
    )


def _revoke_token(root: Path, name: str) -> bool:
    from swarm.devstack.apitokens import revoke_token
    from swarm.devstack.stack import StackPaths

    return revoke_token(StackPaths.of(root).principals, name)


def _print_credentials(user: Principal, note: str, state: dict[str, object]) -> None:
    ca = state.get("nats_ca")
    # The stack's CA is no secret: the server's certificate is verified against it.
    trust = f" SWARM_NATS_CA={escape(str(ca))}" if isinstance(ca, str) and ca else ""
    console.print(f"  credentials (nkey seed): {escape(str(user.seed_file))}")
    console.print(f"  [dim]{escape(note)}; hand the file to {escape(user.name)}, who runs:[/]")
    console.print(
        f"  export SWARM_NATS_CREDENTIALS={escape(str(user.seed_file))} "
        f"SWARM_IDENTITY=user:{escape(user.name)}{trust}",
        soft_wrap=True,
    )


@app.command("add")
def add(
    name: NameArgument,
    role: Annotated[
        Role | None,
        typer.Option(help="Also grant this role (else the user may send nothing yet)."),
    ] = None,
    namespace: NamespaceOption = "default",
    all_namespaces: AllNamespacesOption = False,
    api_token: Annotated[
        bool, typer.Option("--api-token", help="Also issue an HTTP API token (shown once).")
    ] = False,
    timeout: TimeoutOption = 10.0,
    data_dir: DataDirOption = None,
) -> None:
    """Issue a key to a new user, who then acts as `user:NAME` (and, with --role, grant it)."""
    with errors_to_exit():
        from swarm.devstack.principals import add_user

        root, state, user = _edit(data_dir, add_user, name)
        console.print(f"[green]✓[/] user {escape(name)} added (acts as user:{escape(name)})")
        _print_credentials(user, _apply(root, state), state)
    if role is not None:
        url = state.get("nats_url")
        _grant(
            name,
            role,
            _where(namespace, all_namespaces),
            timeout=timeout,
            output=Format.TABLE,
            nats_url=url if isinstance(url, str) else None,
        )
    if api_token:
        with errors_to_exit():
            _issue_token(root, name, state, Format.TABLE)


@app.command("token")
def token(
    name: NameArgument,
    revoke_it: Annotated[
        bool, typer.Option("--revoke", help="Take the user's token back and issue none.")
    ] = False,
    output: OutputOption = Format.TABLE,
    data_dir: DataDirOption = None,
) -> None:
    """Issue a user an HTTP API token (`swarm_…`, shown once), in place of the one it had.

    The API acts for the token's bearer as the user, signed with the user's key: the user's
    roles apply, and its reads show the namespaces where it holds one.
    """
    with errors_to_exit():
        root, state = _stack(data_dir)
        if not revoke_it:
            _issue_token(root, name, state, output)
            return
        from swarm.devstack.principals import users
        from swarm.devstack.stack import StackPaths

        if not any(u.name == name for u in users(StackPaths.of(root).principals)):
            raise CliError(
                f"no user named {name!r}", code=EXIT_USAGE, hint="`swarm user ls` lists them"
            )
        revoked = _revoke_token(root, name)
        said = "revoked: it is refused from now on" if revoked else "none to revoke"
        if output != Format.TABLE:
            emit({"user": name, "revoked": revoked}, output)
            return
        console.print(f"[green]✓[/] user {escape(name)}'s API token {said}")


@app.command("grant")
def grant(
    name: NameArgument,
    role: Annotated[Role, typer.Argument(help="viewer reads; operator runs agents; admin all.")],
    namespace: NamespaceOption = "default",
    all_namespaces: AllNamespacesOption = False,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Give a user a role in a namespace (or every one), in place of the one it held there."""
    _grant(
        name,
        role,
        _where(namespace, all_namespaces),
        timeout=timeout,
        output=output,
        nats_url=nats_url,
    )


@app.command("revoke")
def revoke(
    name: NameArgument,
    namespace: NamespaceOption = "default",
    all_namespaces: AllNamespacesOption = False,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Take back the role a user holds in a namespace (or the one it holds in every one)."""
    where = _where(namespace, all_namespaces)
    change(
        lambda swarm: swarm.access.revoke(name, namespace=where),
        what=f"revoking {name}'s role",
        done=f"user {name} holds no role in {_scope(where)} any more",
        namespace=where or "default",
        timeout=timeout,
        output=output,
        nats_url=nats_url,
    )


@app.command("rotate")
def rotate(
    name: NameArgument,
    api_token: Annotated[
        bool, typer.Option("--api-token", help="Also issue a new HTTP API token (shown once).")
    ] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Give a user a new key; the old one is refused from now on, and so is its API token."""
    with errors_to_exit():
        from swarm.devstack.principals import rotate_user

        root, state, user = _edit(data_dir, rotate_user, name, hint="`swarm user ls` lists them")
        console.print(f"[green]✓[/] user {escape(name)} has a new key; the old one is refused")
        # A key is rotated when it may have leaked, and the token with it: both are replaced.
        if _revoke_token(root, name):
            console.print(
                f"  its API token is revoked too"
                f"{'' if api_token else f' (`swarm user token {escape(name)}` issues one)'}"
            )
        _print_credentials(user, _apply(root, state), state)
        if api_token:
            _issue_token(root, name, state, Format.TABLE)


@app.command("rm")
def remove(name: NameArgument, data_dir: DataDirOption = None) -> None:
    """Remove a user, its key and its API token."""
    with errors_to_exit():
        from swarm.devstack.principals import remove_user

        root, state, _ = _edit(data_dir, remove_user, name, hint="`swarm user ls` lists them")
        _revoke_token(root, name)
        console.print(f"[green]✓[/] user {escape(name)} removed; {_apply(root, state)}")


@app.command("ls")
def ls(data_dir: DataDirOption = None) -> None:
    """List the users, their public keys, roles and API tokens (by hint)."""
    with errors_to_exit():
        from swarm.devstack.apitokens import tokens
        from swarm.devstack.principals import users
        from swarm.devstack.stack import StackPaths

        root, state = _stack(data_dir)
        listed = users(StackPaths.of(root).principals)
        hints = {t.user: t.hint for t in tokens(StackPaths.of(root).principals)}
        if not listed:
            console.print("no users: `swarm user add NAME` issues one a key")
            return
        import asyncio

        url = state.get("nats_url")
        grants = asyncio.run(_grants(url)) if isinstance(url, str) else None
        width = max(len(u.name) for u in listed)
        for user in listed:
            roles = (
                "(roles unknown: the stack is not running)"
                if grants is None
                else ", ".join(
                    f"{g.role} in {g.namespace or 'every namespace'}"
                    for g in grants
                    if g.user == user.name
                )
                or "no role"
            )
            held = f"API token {hints[user.name]}" if user.name in hints else "no API token"
            console.print(
                f"{escape(user.name):<{width}}  {user.public_key}  {escape(roles)}  "
                f"[dim]{escape(held)}[/]"
            )


async def _grants(url: str) -> list[GrantView] | None:
    """Who holds which role, as the stack's Hive has it; None when it cannot be asked."""
    from swarm.client.errors import ClientError
    from swarm.client.eventlog import EventLogError

    try:
        async with connect.client(url, connect.load_settings(), timeout=5.0) as swarm:
            return await swarm.access.list()
    except (ClientError, EventLogError, CliError, OSError):
        return None


# --- the services' keys --------------------------------------------------------------------------


@key_app.command("rotate")
def rotate_key(
    name: Annotated[
        str,
        typer.Argument(
            help="A service of the stack (`swarm status` lists them: hive-0, scheduler, pod-0, "
            "gateway, …), or admin, the owner."
        ),
    ],
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for it to run again.")
    ] = 60.0,
    data_dir: DataDirOption = None,
) -> None:
    """Give a service (or the stack's owner) a new key: the old one is refused from now on and
    the service restarts with the new one.

    The running NATS server reads who it admits again (SIGHUP) and closes what connected with
    the old key; the Hive, the scheduler and the pods read the principals' listing again when it
    changed. The service is stopped and its supervisor starts it again, connecting and signing
    with the new key (a few seconds without it, as after a crash). The owner's key is the
    CLI's: its next call uses the new one.

    Exit codes: 0 rotated (and running again), 2 no such principal (or a user: `swarm user
    rotate`), 3 the service did not run again within --timeout.
    """
    with errors_to_exit():
        from swarm.devstack.principals import rotate_key as rotate_principal

        root, state, principal = _edit(
            data_dir, rotate_principal, name, hint="`swarm status` lists the stack's services"
        )
        console.print(
            f"[green]✓[/] {escape(name)} has a new key ({principal.public_key}); "
            f"{_apply(root, state)}"
        )
        pid = _service_pid(state, name)
        if pid is None:
            console.print(f"  no process of the stack runs as {escape(name)}: nothing to restart")
            return
        os.kill(pid, signal.SIGTERM)
        console.print(f"  restarting {escape(name)} (pid {pid}) to connect with its new key…")
        again = _running_again(root, name, pid, timeout)
        if again is None:
            raise CliError(
                f"{name} did not run again within {timeout:g}s",
                code=EXIT_NO_OUTCOME,
                hint=f"`swarm status` shows how it does, its log is in {root / 'logs'}",
            )
        console.print(f"[green]✓[/] {escape(name)} runs again (pid {again}) with its new key")


def _service_entry(state: object, name: str) -> dict[str, object]:
    """What the stack's state file says of service `name` (empty when nothing)."""
    services = state.get("services") if isinstance(state, dict) else None
    for entry in services if isinstance(services, list) else ():
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    return {}


def _service_pid(state: dict[str, object], name: str) -> int | None:
    """The pid of service `name` of the stack whose state is `state`, when that process is the
    stack supervisor's child (a state file a crashed stack left may name a pid that another
    process has now)."""
    import psutil

    pid = _service_entry(state, name).get("pid")
    if not isinstance(pid, int):
        return None
    try:
        return pid if psutil.Process(pid).ppid() == state.get("pid") else None
    except psutil.Error:
        return None


def _running_again(root: Path, name: str, old: int, timeout: float) -> int | None:
    """The new pid of service `name` once its supervisor reports it running again after
    process `old` ended; None after `timeout` seconds."""
    import time

    from swarm.cli.discovery import STACK_STATE_FILE

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = json.loads((root / STACK_STATE_FILE).read_text())
        except (OSError, ValueError):
            state = None
        if isinstance(state, dict):
            pid = _service_pid(state, name)
            if pid not in (None, old) and _service_entry(state, name).get("state") == "running":
                return pid
        time.sleep(0.2)
    return None
