"""`swarm trace <id>`: everything one command set off, across components, as a tree with timings.

Every command and event carries `correlationid` (the command that started the chain) and
`causationid` (what directly caused it): the Hive's events name the command they decide, the
scheduler's proposals name the `replica_requested` they place, the pods' reports name the
`replica_scheduled` that put the replica there. So the chain is read back from the two streams:

1. The root command is found without a scan when possible: its outcome sits on
   `swarm.evt.command.<id>.*` (a direct lookup), and an event id written by the Hive is
   `<command id>-<n>`. Other ids fall back to a scan of the events stream.
2. Both streams are read from a little before that outcome up to `--window` seconds after it
   (JetStream seeks by time), keeping what carries the correlation id.
3. Entries hang under their cause; offsets are from the root command's time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

import typer
from nats.js.errors import NotFoundError
from rich.text import Text
from rich.tree import Tree

from schemas import names
from swarm.cli import connect
from swarm.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Format,
    emit,
    status,
    stdout_console,
)
from swarm.cli.timeline import printable
from swarm.cli.verbs import OutputOption, finish
from swarm.kernel.eventlog import Delivery, EventLog

#: Commands are sent before their outcome; this much earlier is searched for the root command.
_BEFORE = timedelta(seconds=30)
_SUMMARY_LIMIT = 120


def register(root: typer.Typer) -> None:
    root.command("trace")(trace)


@dataclass(slots=True)
class Node:
    id: str
    type: str
    kind: str  # "command", "event" or "outcome"
    time: datetime | None
    subject: str
    source: str
    cause: str | None
    correlation: str | None
    summary: str
    seq: int
    children: list[Node] = field(default_factory=list)

    def as_json(self, root_time: datetime | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "kind": self.kind,
            "time": self.time.isoformat() if self.time else None,
            "offset_ms": _offset_ms(self.time, root_time),
            "source": self.source,
            "subject": self.subject,
            "seq": self.seq,
            "causationid": self.cause,
            "summary": self.summary,
            "decided_ms": decided_ms(self),
            "children": [c.as_json(root_time) for c in self.children],
        }


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

    async def main() -> int:
        settings = connect.load_settings()
        target = connect.resolve_nats_url(nats_url, settings)
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
            hint="pip install 'swarm[otel]'",
        ) from None
    correlation = roots[0].correlation or roots[0].id if roots else ""
    return otel.export(roots, correlation, otel.otlp_exporter(endpoint))


async def collect(log: EventLog, wanted: str, *, window: float = 300.0) -> list[Node]:
    """The trees of what `wanted` (a command or event id) belongs to; the root command first."""
    found = await _root_command(log, wanted)
    if found is None:
        raise CliError(
            f"no command or event with id {wanted} on the log",
            code=EXIT_FAILED,
            hint="`swarm timeline` lists ids; `swarm publish` prints the id it sends",
        )
    correlation, anchor = found
    start = anchor - _BEFORE
    end = anchor + timedelta(seconds=window)
    nodes: dict[str, Node] = {}
    for stream in (names.STREAM_COMMANDS, names.STREAM_EVENTS):
        replay = log.replay(stream, start_time=start, idle_timeout=0.25)
        async with connect.closing(replay) as deliveries:
            async for delivery in deliveries:
                if delivery.timestamp > end:
                    break
                node = _node(delivery, stream)
                if node is not None and correlation in (node.id, node.correlation):
                    nodes[node.id] = node
    return _tree(nodes, correlation)


async def _root_command(log: EventLog, wanted: str) -> tuple[str, datetime] | None:
    """(correlation id, time of the root's outcome) for a command or event id."""
    candidates = [wanted]
    head, _, tail = wanted.rpartition("-")
    if head and tail.isdigit():
        candidates.append(head)  # the Hive names a command's events `<command id>-<n>`
    for candidate in candidates:
        if not names.is_token(candidate):
            continue
        try:
            msg = await log.js.get_last_msg(names.STREAM_EVENTS, names.outcome_wildcard(candidate))
        except NotFoundError:
            continue
        body = _json(msg.data or b"")
        stamp = _time(body.get("time"))
        if stamp is None:
            continue
        correlation = str(body.get("correlationid") or candidate)
        if correlation != candidate and names.is_token(correlation):
            # Part of a longer chain (e.g. a scheduler proposal): anchor on its first command.
            return await _root_command(log, correlation) or (correlation, stamp)
        return correlation, stamp
    status(f"searching the event log for {wanted}")
    replay = log.replay(names.STREAM_EVENTS, idle_timeout=0.25)
    async with connect.closing(replay) as deliveries:
        async for delivery in deliveries:
            if wanted.encode() not in delivery.data:
                continue
            body = _json(delivery.data)
            if body.get("id") == wanted:
                correlation = str(body.get("correlationid") or wanted)
                if correlation != wanted:
                    return await _root_command(log, correlation) or (
                        correlation,
                        delivery.timestamp,
                    )
                return correlation, delivery.timestamp
    return None


def _node(delivery: Delivery, stream: str) -> Node | None:
    body = _json(delivery.data)
    if not isinstance(body.get("id"), str):
        return None
    data = body.get("data")
    kind = "command" if stream == names.STREAM_COMMANDS else "event"
    parts = names.parse_event_subject(delivery.subject)
    if parts is not None and parts[0] == names.OUTCOME_AGGREGATE:
        kind = "outcome"
    return Node(
        id=body["id"],
        type=str(body.get("type") or "?"),
        kind=kind,
        time=_time(body.get("time")) or delivery.timestamp,
        subject=delivery.subject,
        source=str(body.get("source") or "?"),
        cause=body.get("causationid") if isinstance(body.get("causationid"), str) else None,
        correlation=(
            body.get("correlationid") if isinstance(body.get("correlationid"), str) else None
        ),
        summary=_summary(data if isinstance(data, dict) else {}),
        seq=delivery.stream_seq,
    )


def _tree(nodes: dict[str, Node], correlation: str) -> list[Node]:
    roots: list[Node] = []
    ordered = sorted(nodes.values(), key=lambda n: (n.time or datetime.max, n.seq))
    for node in ordered:
        parent = nodes.get(node.cause) if node.cause and node.cause != node.id else None
        if parent is not None:
            parent.children.append(node)
        else:
            roots.append(node)
    roots.sort(key=lambda n: (n.id != correlation, n.time or datetime.max))
    return roots


def render(root: Node, root_time: datetime | None) -> Tree:
    tree = Tree(_label(root, root_time))
    _grow(tree, root, root_time)
    return tree


def _grow(branch: Tree, node: Node, root_time: datetime | None) -> None:
    for child in node.children:
        _grow(branch.add(_label(child, root_time)), child, root_time)


_STYLES = {"command": "bold cyan", "event": "green", "outcome": "magenta"}


def _label(node: Node, root_time: datetime | None) -> Text:
    offset = _offset_ms(node.time, root_time)
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


def decided_ms(node: Node) -> float | None:
    """For a command: time from the command to its outcome."""
    if node.kind != "command":
        return None
    outcome = next((c for c in node.children if c.kind == "outcome"), None)
    if outcome is None:
        return None
    return _offset_ms(outcome.time, node.time)


def _short(type_: str) -> str:
    return type_.removeprefix(f"{names.COMMANDS_PREFIX}.").removeprefix(
        f"{names.EVENT_TYPE_PREFIX}."
    )


def _summary(data: dict[str, Any]) -> str:
    bits = []
    for key in ("name", "replica_id", "pod_id", "status", "version", "reason", "rule"):
        value = data.get(key)
        if isinstance(value, str | int) and value != "":
            bits.append(f"{key}={value}")
    text = " ".join(bits)
    return printable(text[:_SUMMARY_LIMIT])


def _offset_ms(moment: datetime | None, root: datetime | None) -> float | None:
    if moment is None or root is None:
        return None
    return round((moment - root).total_seconds() * 1000, 1)


def _json(data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
