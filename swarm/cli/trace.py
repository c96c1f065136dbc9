"""`swarm trace <id>`: everything one command set off, across components, as a tree with timings.

The tree is read back from the log by `swarm.client.trace` (see there how); this module draws it,
prints it as JSON, or exports it as OpenTelemetry spans.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from swarm.cli import connect
from swarm.cli.output import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Format,
    emit,
    status,
    stdout_console,
)
from swarm.cli.verbs import OutputOption, finish

if TYPE_CHECKING:
    from rich.tree import Tree

    from swarm.client.eventlog import EventLog
    from swarm.client.trace import Node, decided_ms

__all__ = ["Node", "collect", "decided_ms", "register", "render", "trace"]


def __getattr__(name: str) -> Any:
    # Re-exported from the client layer on first use: every `swarm` call registers `trace`.
    if name in ("Node", "decided_ms"):
        from swarm.client import trace as tracing

        return getattr(tracing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(root: typer.Typer) -> None:
    root.command("trace")(trace)


def trace(
    wanted: Annotated[
        str,
        typer.Argument(
            metavar="ID",
            help="A command id, or the id of an event it caused.",
            show_default=False,
        ),
    ],
    window: Annotated[
        float,
        typer.Option("--window", min=1, help="Seconds after the root command to follow the chain."),
    ] = 300.0,
    output: OutputOption = Format.TABLE,
    otlp: Annotated[
        str | None,
        typer.Option(
            "--otlp",
            metavar="URL",
            help="Also export it as OpenTelemetry spans over OTLP/HTTP, e.g. "
            "http://localhost:4318/v1/traces (needs the otel extra).",
        ),
    ] = None,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Show everything one command caused (events, outcomes, the scheduler's proposals, the
    pods' reports) as a tree with times from the command."""
    from schemas import names

    async def main() -> int:
        target, settings = connect.locate(nats_url)
        streams = (names.STREAM_COMMANDS, names.STREAM_EVENTS)
        async with connect.session(target, settings, streams=streams) as log:
            roots = await collect(log, wanted, window=window)
        root_time = roots[0].time if roots else None
        if otlp is not None:
            sent = _export(roots, otlp)
            status(f"exported {sent} spans to {otlp}")
        if output != Format.TABLE:
            emit({"id": wanted, "trace": [r.as_json(root_time) for r in roots]}, output)
        else:
            console = stdout_console()
            for root in roots:
                console.print(render(root, root_time))
        return EXIT_OK

    finish(main())


def _export(roots: list[Node], endpoint: str) -> int:
    try:
        from swarm.cli import otel
    except ImportError:
        raise CliError(
            "OpenTelemetry export needs the otel extra",
            code=EXIT_USAGE,
            hint="pip install 'swarm-platform[otel]'",
        ) from None
    correlation = roots[0].correlation or roots[0].id if roots else ""
    return otel.export(roots, correlation, otel.otlp_exporter(endpoint))


async def collect(log: EventLog, wanted: str, *, window: float = 300.0) -> list[Node]:
    """`swarm.client.trace.collect`, saying on stderr when it has to scan the whole log."""
    from swarm.client import trace as tracing

    return await tracing.collect(log, wanted, window=window, on_note=status)


def render(root: Node, root_time: datetime | None) -> Tree:
    from rich.tree import Tree

    tree = Tree(_label(root, root_time))
    _grow(tree, root, root_time)
    return tree


def _grow(branch: Tree, node: Node, root_time: datetime | None) -> None:
    for child in node.children:
        _grow(branch.add(_label(child, root_time)), child, root_time)


_STYLES = {"command": "bold cyan", "event": "green", "outcome": "magenta"}


def _label(node: Node, root_time: datetime | None) -> Text:
    from swarm.client.trace import decided_ms, offset_ms

    offset = offset_ms(node.time, root_time)
    text = Text()
    text.append(f"+{offset:9.1f} ms  " if offset is not None else " " * 15, style="dim")
    rejected = node.kind == "outcome" and node.type.endswith("rejected")
    text.append(_short(node.type), style="bold red" if rejected else _STYLES.get(node.kind, ""))
    decided = decided_ms(node)
    if decided is not None:
        text.append(f" (decided in {decided:.1f} ms)", style="dim")
    if node.summary:
        text.append(f"  {node.summary}")
    text.append(f"  {node.source} [{node.id}]", style="dim")
    return text


def _short(type_: str) -> str:
    from schemas import names

    return type_.removeprefix(f"{names.COMMANDS_PREFIX}.").removeprefix(
        f"{names.EVENT_TYPE_PREFIX}."
    )
