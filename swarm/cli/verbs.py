"""The plumbing every verb module (`swarm agent`, `swarm namespace`, `swarm pod`) shares.

Generic options, running a verb, sending a command and reporting its outcome, watching a read
and formatting states and ages.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.text import Text

from swarm.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    CliError,
    Format,
    emit,
    errors_to_exit,
    run_interruptible,
    status,
    stdout_console,
    to_jsonable,
)

if TYPE_CHECKING:
    # Sending a command and awaiting its outcome is the client layer's, shared with the HTTP
    # API; these names stay importable from here for the verb modules (see `__getattr__`).
    from swarm.client.commands import Issued, Outcome, issue, read_floor
    from swarm.client.eventlog import EventLog
    from swarm.client.queries import HiveQueries
    from swarm.client.swarm import Agents, Swarm

#: Imported from the client layer on first use: every `swarm` call imports this module for its
#: options, and the client layer brings schemas, nats-py and pydantic with it.
_FROM_CLIENT = frozenset({"Issued", "Outcome", "issue", "read_floor"})


def __getattr__(name: str) -> Any:
    if name in _FROM_CLIENT:
        from swarm.client import commands

        return getattr(commands, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_NAMESPACE",
    "EXIT_CODES",
    "WATCH_INTERVAL",
    "AgentNameArgument",
    "AgentNamespaceOption",
    "Draw",
    "Fetch",
    "Issued",
    "Nothing",
    "OutputOption",
    "TimeoutOption",
    "WatchOption",
    "age",
    "change",
    "change_agent",
    "conclude",
    "finish",
    "issue",
    "listing",
    "read_floor",
    "rejection",
    "show",
    "show_read",
    "styled",
]

#: Seconds between redraws with `--watch`.
WATCH_INTERVAL = 1.0
_STATUS_STYLES = {
    "running": "green",
    "failed": "bold red",
    "degraded": "yellow",
    "crashed": "yellow",
    "stopped": "dim",
    "stopping": "dim",
    "ready": "green",
    "lost": "bold red",
}


# --- Options -------------------------------------------------------------------------------------

OutputOption = Annotated[Format, typer.Option("--output", "-o", help="Output format.")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the command's outcome.")
]
WatchOption = Annotated[
    bool, typer.Option("--watch", "-w", help="Redraw every second until Ctrl-C.")
]
#: The namespace of a verb that names an agent without `--namespace`.
DEFAULT_NAMESPACE = "default"
AgentNameArgument = Annotated[str, typer.Argument(help="The agent's name.", show_default=False)]
AgentNamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace", "-n", help="The agent's namespace.", show_default=DEFAULT_NAMESPACE
    ),
]
EXIT_CODES = (
    "Exit codes: 0 done, 1 rejected or failed, 2 invalid input (nothing sent), "
    "3 no outcome in time, 4 NATS or the Hive unreachable."
)


# --- Running a verb ------------------------------------------------------------------------------


def finish(main: Coroutine[Any, Any, int], *, watching: bool = False) -> None:
    """Run a verb's body and exit with its code; Ctrl-C ends a `--watch` with 0, not 130."""
    with errors_to_exit():
        try:
            code = run_interruptible(main)
        except KeyboardInterrupt:
            if not watching:
                raise
            code = EXIT_OK
    if code != EXIT_OK:
        raise typer.Exit(code)


# --- Sending a command ---------------------------------------------------------------------------


def change(
    verb: Callable[[Swarm], Awaitable[Issued]],
    *,
    what: str,
    done: str,
    namespace: str,
    timeout: float,
    output: Format,
    nats_url: str | None,
) -> None:
    """Run one command verb of the client and print its outcome: the body of the simple verbs
    (`agent scale|rollback|stop|delete|quarantine|release`, `namespace create`)."""
    from schemas import names
    from swarm.cli import connect

    async def main() -> int:
        settings = connect.load_settings()
        streams = (names.STREAM_COMMANDS, names.STREAM_EVENTS)
        async with connect.client(nats_url, settings, streams=streams, timeout=timeout) as swarm:
            issued = await verb(swarm)
        conclude(issued, output, what=what, done=done, namespace=namespace)
        return EXIT_OK

    finish(main())


def change_agent(
    name: str,
    namespace: str | None,
    verb: Callable[[Agents, str], Awaitable[Issued]],
    *,
    command: str | None,
    done: str,
    timeout: float,
    output: Format,
    nats_url: str | None,
) -> None:
    """`change` for a verb on one agent (`agent scale|rollback|stop|delete|quarantine|release`):
    `verb` gets the client's agents and the namespace (`--namespace`, else `DEFAULT_NAMESPACE`).

    Accepted, it prints "agent NS/NAME `done`"; a rejection names the `command` ("stop of
    NS/NAME"), or without one the agent.
    """
    ns = namespace or DEFAULT_NAMESPACE
    agent = f"{ns}/{name}"
    change(
        lambda swarm: verb(swarm.agents, ns),
        what=f"{command} of {agent}" if command else f"agent {agent}",
        done=f"agent {agent} {done}",
        namespace=ns,
        timeout=timeout,
        output=output,
        nats_url=nats_url,
    )


def listing(
    nats_url: str | None,
    key: str,
    read: Callable[[HiveQueries, int], Awaitable[Any]],
    draw: Callable[[Any], RenderableType],
    output: Format,
    *,
    watch: bool = False,
    title: str = "",
) -> None:
    """The body of the `ls` verbs: `read` the Hive's answer as of the end of the log (its
    second argument), and show it under `key` with its `applied_seq`, once or on every change."""

    async def listed(log: EventLog, queries: HiveQueries, floor: int) -> dict[str, Any]:
        found = await read(queries, floor)
        return {key: found, "applied_seq": queries.applied_seq}

    show_read(nats_url, listed, lambda v: draw(v[key]), output, watch=watch, title=title)


def show_read(
    nats_url: str | None,
    read: Callable[[EventLog, HiveQueries, int], Awaitable[Any]],
    draw: Draw,
    output: Format,
    *,
    watch: bool = False,
    title: str = "",
) -> None:
    """The body of the read verbs (`ls`, `agent describe`): `read` as of the end of the log (its
    third argument), and show it once or on every change."""
    from swarm.cli import connect

    async def main() -> int:
        # No settings: a read needs none of them (`connect.connect`).
        target = connect.resolve_nats_url(nats_url)
        # Imported once NATS is named: without a stack the verb has ended above, quickly.
        from schemas import names
        from swarm.cli.queries import HiveQueries
        from swarm.client.queries import read_floor

        async with connect.session(target, streams=(names.STREAM_EVENTS,)) as log:
            queries = HiveQueries(log)

            async def fetch() -> Any:
                return await read(log, queries, await read_floor(log))

            await show(fetch, draw, output, watch=watch, title=title)
        return EXIT_OK

    finish(main(), watching=watch)


def conclude(issued: Issued, output: Format, *, what: str, done: str, namespace: str) -> None:
    """Print the outcome: `done` when accepted; a `CliError` (exit 1) naming the rule if not.

    With `-o json|yaml` the outcome CloudEvent itself is printed, whichever it was.
    """
    from swarm.cli import publish

    if output != Format.TABLE:
        emit(publish.outcome_document(issued.outcome), output)
    if not issued.accepted:
        raise rejection(issued.outcome, what=what, namespace=namespace)
    if output == Format.TABLE:
        stdout_console().print(Text(done))


def rejection(outcome: Outcome, *, what: str, namespace: str) -> CliError:
    from swarm.client import commands

    said = commands.rejection_of(outcome)
    suffix = f" (rule: {said.rule})" if said.rule else ""
    return CliError(
        f"{what} rejected: {said.reason}{suffix}",
        code=EXIT_FAILED,
        errors=said.errors,
        hint=_rejection_hint(said.rule or "", said.reason, namespace),
    )


def _rejection_hint(rule: str, reason: str, namespace: str) -> str | None:
    if rule.startswith("quota."):
        flag = "--" + rule.removeprefix("quota.").replace("_", "-")
        return (
            f"`swarm namespace ls` shows the quotas; `swarm namespace update {namespace} "
            f"{flag} N` raises this one"
        )
    # Rules are coarse ("not_found" covers agents, namespaces and versions), so the reason's
    # subject picks the hint; a reason the hint does not fit gets none.
    if rule == "not_found" and reason.startswith("namespace "):
        return f"create it first: `swarm namespace create {namespace}`"
    if rule == "not_found" and reason.startswith("agent ") and reason.endswith(" not found"):
        return f"`swarm agent ls -n {namespace}` lists its agents, `-A` those of all namespaces"
    if reason.startswith("namespace ") and reason.endswith(" exists"):
        return f"`swarm namespace update {namespace}` changes its quota"
    if rule == "identity":
        return "the CLI sends as SWARM_IDENTITY (kind:name, e.g. user:ann)"
    if rule == "module":
        return (
            "push the module first: `swarm module push FILE` stores it and prints the sha256 "
            "to deploy with (--module-sha256); `swarm module ls` lists what is stored"
        )
    return None


# --- Watching ------------------------------------------------------------------------------------


class Nothing(Text):
    """What `draw` returns for an empty list: said on stderr, so stdout holds only rows (as
    `kubectl get` does), but shown in the frame while watching."""

    def __init__(self, message: str) -> None:
        super().__init__(message, style="dim")


Fetch = Callable[[], Awaitable[Any]]
Draw = Callable[[Any], RenderableType]


async def show(fetch: Fetch, draw: Draw, output: Format, *, watch: bool, title: str) -> None:
    """Print `fetch()` once, or with `watch` again every second until Ctrl-C.

    On a terminal the table is redrawn in place (rich Live). When stdout is a pipe or a file, or
    with `-o json|yaml`, a frame is printed only when what was fetched changed, so the output
    reads as a log of changes (like `kubectl get -w`). A failed read while watching (the Hive
    restarting, the agent just deleted) is shown and the watch goes on.
    """
    if not watch:
        value = await fetch()
        if output != Format.TABLE:
            emit(value, output)
            return
        frame = draw(value)
        if isinstance(frame, Nothing):
            status(frame.plain)
        else:
            stdout_console().print(frame)
        return
    console = stdout_console()
    if output == Format.TABLE and console.is_terminal:
        await _watch_in_place(console, fetch, draw, title)
    else:
        await _watch_changes(console, fetch, draw, output)


async def _watch_in_place(console: Console, fetch: Fetch, draw: Draw, title: str) -> None:
    import asyncio

    from rich.live import Live

    with Live(console=console, auto_refresh=False) as live:
        while True:
            try:
                frame = draw(await fetch())
            except CliError as exc:
                _keep_watching(exc)
                frame = Text.assemble(("error: ", "bold red"), exc.message)
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            heading = Text(f"{title} · {stamp} UTC · Ctrl-C to stop", style="dim")
            live.update(Group(heading, frame), refresh=True)
            await asyncio.sleep(WATCH_INTERVAL)


async def _watch_changes(console: Console, fetch: Fetch, draw: Draw, output: Format) -> None:
    import asyncio

    last: str | None = None
    frames = 0
    while True:
        try:
            value = await fetch()
        except CliError as exc:
            _keep_watching(exc)
            # Said on stderr, so that -o json|yaml output stays parseable.
            if exc.message != last:
                status(f"error: {exc.message}")
            last = exc.message
        else:
            # Compared on the data, not the drawing: AGE alone would make every frame new.
            key = json.dumps(to_jsonable(value), sort_keys=True)
            if key != last:
                if output == Format.TABLE:
                    if frames:
                        console.print()
                    console.print(draw(value))
                else:
                    if output == Format.YAML and frames:
                        typer.echo("---")
                    emit(value, output)
                sys.stdout.flush()
                frames += 1
            last = key
        await asyncio.sleep(WATCH_INTERVAL)


def _keep_watching(exc: CliError) -> None:
    """Re-raise errors a watch cannot outlast; a missing answer or agent may come back."""
    if exc.code not in (EXIT_FAILED, EXIT_UNAVAILABLE):
        raise exc


# --- Formatting ----------------------------------------------------------------------------------


def styled(state: str) -> Text:
    return Text(state, style=_STATUS_STYLES.get(state, ""))


def age(timestamp: datetime | str | None, now: datetime | None = None) -> str:
    """How long ago, the way kubectl prints it: 45s, 12m, 5h, 3d.

    A time from a view (`schemas.views`) comes parsed; one from a log record is still a string.
    """
    if not timestamp:
        return "?"
    if isinstance(timestamp, datetime):
        then = timestamp
    else:
        try:
            then = datetime.fromisoformat(timestamp)
        except ValueError:
            return "?"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 120 * 60:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
