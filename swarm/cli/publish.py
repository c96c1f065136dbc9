"""`swarm publish`: send any command and wait for its one outcome.

This is what any client does, done by hand: put a CloudEvent on `SWARM_COMMANDS` with its id as
`Nats-Msg-Id`, then read the outcome the Hive writes to `swarm.evt.command.<id>.accepted|rejected`.
Local validation catches mistakes before they reach the log; `--no-validate` skips it so the
server's own rejection path can be exercised.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.text import Text

from schemas import REGISTRY, DecodeError, Envelope, Registry, names, new_id, utcnow
from swarm.cli import connect
from swarm.cli.output import (
    EXIT_FAILED,
    EXIT_NO_OUTCOME,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    FieldProblem,
    Format,
    emit,
    field_errors_table,
    run,
    status,
    stdout_console,
    table,
)
from swarm.kernel.eventlog import AppendFailed, AppendRequest, EventLog
from swarm.kernel.settings import Settings

#: CloudEvents `source` of everything the CLI sends.
CLI_SOURCE = "swarm-cli"
#: How far before its outcome the events a command caused are looked for; beyond, ids only.
_LOOKUP_LIMIT = 10_000
_SUBJECT_FORBIDDEN = frozenset(" \t\r\n*>")
_INVALID_OUTCOME = names.outcome_subject(names.INVALID_COMMAND_ID, names.OUTCOME_REJECTED)


@dataclass(frozen=True, slots=True)
class Sent:
    """Where the command landed in `SWARM_COMMANDS`."""

    id: str
    type: str
    seq: int
    #: The id was published before (within the duplicate window); JetStream kept the first.
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """The outcome event of a command, as read from `SWARM_EVENTS`."""

    accepted: bool
    seq: int
    subject: str
    #: The outcome CloudEvent as JSON (`None` when its body was not a JSON object).
    body: dict[str, Any] | None
    #: The strictly decoded outcome, when this version of Swarm can decode it.
    envelope: Envelope[Any] | None


@dataclass(frozen=True, slots=True)
class CausedEvent:
    id: str
    seq: int | None = None
    type: str | None = None
    subject: str | None = None


# --- Building the command ------------------------------------------------------------------------


def load_document(source: str) -> dict[str, Any]:
    """A command document from a file or `-` (stdin), as JSON or YAML."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror or exc}", code=EXIT_USAGE) from None
    where = "stdin" if source == "-" else source
    try:
        # YAML 1.2 reads JSON, but PyYAML (1.1) does not quite; JSON first keeps JSON exact.
        document = json.loads(text)
    except ValueError:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CliError(f"{where} is neither JSON nor YAML: {exc}", code=EXIT_USAGE) from None
    if not isinstance(document, dict):
        raise CliError(
            f"{where} must hold one object (a CloudEvent, or just type and data)", code=EXIT_USAGE
        )
    return document


def parse_value(text: str) -> Any:
    """A `--set` value: JSON when it parses (`3`, `true`, `["a"]`), else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_sets(data: dict[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """A copy of `data` with each `dotted.key=value` assigned, creating objects on the way."""
    result: dict[str, Any] = json.loads(json.dumps(data))  # deep copy of plain JSON data
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise CliError(
                f"--set {assignment!r}: expected key=value (dotted keys for nested fields)",
                code=EXIT_USAGE,
            )
        target = result
        for i, part in enumerate(path[:-1]):
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise CliError(f"--set {assignment!r}: {where} is not an object", code=EXIT_USAGE)
            target = child
        target[path[-1]] = parse_value(raw)
    return result


def build_command(
    document: Mapping[str, Any] | None,
    *,
    type_: str | None = None,
    data: str | None = None,
    sets: Sequence[str] = (),
    identity: str | None = None,
    registry: Registry = REGISTRY,
) -> dict[str, Any]:
    """The full CloudEvent to send, from a document and/or flags; fills what is missing.

    What the document states is kept (a given `id` makes a re-send idempotent); `type_`, `data`
    and `sets` override it in that order.
    """
    event: dict[str, Any] = dict(document or {})
    if type_ is not None:
        if isinstance(event.get("type"), str) and event["type"] != type_:
            raise CliError(
                f"TYPE {type_} differs from the document's type {event['type']}", code=EXIT_USAGE
            )
        event["type"] = type_
    if data is not None:
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise CliError(f"--data is not JSON: {exc}", code=EXIT_USAGE) from None
        if not isinstance(parsed, dict):
            raise CliError("--data must be a JSON object", code=EXIT_USAGE)
        event["data"] = parsed
    event.setdefault("data", {})
    if sets:
        if not isinstance(event["data"], dict):
            raise CliError("--set needs data to be an object", code=EXIT_USAGE)
        event["data"] = apply_sets(event["data"], sets)

    command_type = event.get("type")
    if not isinstance(command_type, str) or not command_type:
        raise CliError(
            "no command type: pass TYPE (e.g. swarm.cmd.agent.deploy) or a document with 'type'",
            code=EXIT_USAGE,
        )
    _check_command_type(command_type)

    event.setdefault("specversion", names.CLOUDEVENTS_SPECVERSION)
    event.setdefault("id", new_id())
    event.setdefault("source", CLI_SOURCE)
    event.setdefault("time", utcnow().isoformat())
    event.setdefault("datacontenttype", names.CONTENT_TYPE_JSON)
    if identity is not None:
        event.setdefault("identity", identity)
    entry = registry.get(command_type)
    if entry is not None and entry.kind == "command":
        event.setdefault("dataschema", names.dataschema(entry.type, entry.model.VERSION))
    if not isinstance(event["id"], str) or not event["id"] or _has_control(event["id"]):
        # Even unvalidated, the id travels in a header and an outcome subject.
        raise CliError(
            f"id must be a non-empty single-line string, got {event['id']!r}", code=EXIT_USAGE
        )
    return event


def _check_command_type(type_: str) -> None:
    # Checked even with --no-validate: the type is the subject, and only commands may be sent;
    # events are written by the Hive alone.
    if not type_.startswith(names.COMMANDS_PREFIX + "."):
        raise CliError(
            f"{type_} is not a command type: commands are {names.COMMANDS_PREFIX}.<domain>.<verb>",
            code=EXIT_USAGE,
            hint="only the Hive writes events; send the command that makes it write one",
        )
    if any(not token or _SUBJECT_FORBIDDEN & set(token) for token in type_.split(".")):
        raise CliError(f"{type_!r} is not a valid subject", code=EXIT_USAGE)


def _has_control(value: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)


def validate_command(event: Mapping[str, Any], registry: Registry = REGISTRY) -> None:
    """Decode `event` strictly as the Hive will; raises `CliError` listing field errors."""
    try:
        registry.decode(encode(event), kind="command")
    except DecodeError as exc:
        unknown = any(e.type == "unknown_type" for e in exc.errors)
        problems = [] if unknown else [FieldProblem(e.loc, e.msg, e.type) for e in exc.errors]
        known = ", ".join(e.type for e in registry if e.kind == "command") or "none yet"
        raise CliError(
            exc.reason,
            code=EXIT_USAGE,
            errors=problems,
            hint=(
                f"known command types: {known}; --no-validate sends it anyway"
                if unknown
                else "fix the fields above, or pass --no-validate to let the server judge"
            ),
        ) from None


def encode(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


# --- Sending and waiting -------------------------------------------------------------------------


async def send(log: EventLog, event: Mapping[str, Any]) -> Sent:
    """Append the command to `SWARM_COMMANDS`, deduplicated by its id."""
    request = AppendRequest(subject=event["type"], body=encode(event), msg_id=event["id"])
    try:
        appended = await log.append_raw(request)
    except AppendFailed as exc:
        raise CliError(f"could not publish: {exc}", code=EXIT_UNAVAILABLE) from None
    return Sent(event["id"], event["type"], appended.seq, appended.duplicate)


def outcome_subjects(command_id: str) -> list[str]:
    """Where the outcome of `command_id` can appear.

    Besides the command's own outcome subjects, the `_invalid` subject: a command the Hive cannot
    parse far enough is answered there, carrying the id it could read in `data.received`.
    """
    if command_id == names.INVALID_COMMAND_ID or not names.is_token(command_id):
        return [_INVALID_OUTCOME]
    return [names.outcome_wildcard(command_id), _INVALID_OUTCOME]


async def wait_for_outcome(
    log: EventLog,
    command_id: str,
    *,
    start_seq: int,
    within: float,
    registry: Registry = REGISTRY,
) -> Outcome | None:
    """The first outcome for `command_id` at or after `start_seq`, or None after `within` s.

    Reading from a sequence taken before the publish (rather than subscribing after it) is what
    makes this race-free: an outcome written at any moment after the publish is at or beyond it.
    """
    try:
        async with asyncio.timeout(within):
            replay = log.replay(
                names.STREAM_EVENTS,
                start_seq=start_seq,
                subjects=outcome_subjects(command_id),
                follow=True,
                idle_timeout=min(1.0, within),
            )
            async with connect.closing(replay) as deliveries:
                async for delivery in deliveries:
                    body = _json_object(delivery.data)
                    if delivery.subject == _INVALID_OUTCOME and _received_id(body) != command_id:
                        continue  # another sender's unparseable command
                    return Outcome(
                        accepted=delivery.subject.endswith("." + names.OUTCOME_ACCEPTED),
                        seq=delivery.stream_seq,
                        subject=delivery.subject,
                        body=body,
                        envelope=_decode(delivery.data, registry),
                    )
    except TimeoutError:
        return None
    return None


async def caused_events(log: EventLog, outcome: Outcome, *, start_seq: int) -> list[CausedEvent]:
    """The events an accepted command caused, looked up in the log just before its outcome.

    The Hive writes them together with the outcome, so they sit right before it; the search goes
    back at most `_LOOKUP_LIMIT` entries (a re-sent command may point far back in the log).
    """
    data = (outcome.body or {}).get("data")
    events = data.get("events") if isinstance(data, dict) else None
    ids = [i for i in events if isinstance(i, str)] if isinstance(events, list) else []
    if not ids:
        return []
    found: dict[str, CausedEvent] = {}
    wanted = set(ids)
    first = max(start_seq, outcome.seq - _LOOKUP_LIMIT, 1)
    replay = log.replay(names.STREAM_EVENTS, start_seq=first)
    async with connect.closing(replay) as deliveries:
        async for delivery in deliveries:
            if delivery.stream_seq >= outcome.seq:
                break
            body = _json_object(delivery.data) or {}
            event_id, type_ = body.get("id"), body.get("type")
            if isinstance(event_id, str) and event_id in wanted:
                found[event_id] = CausedEvent(
                    event_id,
                    delivery.stream_seq,
                    type_ if isinstance(type_, str) else None,
                    delivery.subject,
                )
                if len(found) == len(wanted):
                    break
    return [found.get(i, CausedEvent(i)) for i in ids]


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _received_id(body: dict[str, Any] | None) -> object:
    data = (body or {}).get("data")
    received = data.get("received") if isinstance(data, dict) else None
    return received.get("id") if isinstance(received, dict) else None


def _decode(raw: bytes, registry: Registry) -> Envelope[Any] | None:
    try:
        return registry.decode(raw, kind="event")
    except DecodeError:
        return None


# --- Printing ------------------------------------------------------------------------------------


def print_outcome(sent: Sent, outcome: Outcome, caused: Sequence[CausedEvent]) -> None:
    console = stdout_console()
    raw_data = (outcome.body or {}).get("data")
    # Read leniently (not through the model), so an outcome from a newer Hive still shows.
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    if outcome.accepted:
        console.print(Text.assemble(("accepted ", "bold green"), f"{sent.type} {sent.id}"))
        if caused:
            rows = [[e.seq or "?", e.type or "?", e.subject or "?", e.id] for e in caused]
            console.print(
                table(["SEQ", "TYPE", "SUBJECT", "EVENT ID"], rows, title="events caused")
            )
        else:
            console.print(Text("it caused no events", style="dim"))
    else:
        reason = data.get("reason") or "(no reason given)"
        console.print(
            Text.assemble(("rejected ", "bold red"), f"{sent.type} {sent.id}: ", str(reason))
        )
        if data.get("rule"):
            console.print(Text.assemble(("rule: ", "bold"), str(data["rule"])))
        errors = data.get("errors")
        problems = [
            FieldProblem(str(e.get("loc", "")), str(e.get("msg", "")), str(e.get("type", "")))
            for e in (errors if isinstance(errors, list) else [])
            if isinstance(e, dict)
        ]
        if problems:
            console.print(field_errors_table(problems))
    if outcome.envelope is None:
        console.print(Text("(an outcome format this CLI does not know; shown as read)", "dim"))


def outcome_document(outcome: Outcome) -> Any:
    """What `-o json|yaml` prints: the outcome CloudEvent itself."""
    if outcome.body is not None:
        return outcome.body
    return {"subject": outcome.subject, "seq": outcome.seq, "undecodable": True}


# --- The verb ------------------------------------------------------------------------------------


async def _publish(
    event: dict[str, Any],
    *,
    target: connect.NatsTarget,
    settings: Settings,
    wait: bool,
    within: float,
    output: Format,
    registry: Registry,
) -> int:
    streams = (names.STREAM_COMMANDS, names.STREAM_EVENTS)
    async with connect.session(target, settings, streams=streams) as log:
        # Taken before the publish: the outcome cannot be written before the command exists.
        before = await log.last_sequence(names.STREAM_EVENTS)
        sent = await send(log, event)
        if not wait:
            if output == Format.TABLE:
                suffix = " (duplicate id: already in the log)" if sent.duplicate else ""
                stdout_console().print(
                    Text(f"sent {sent.type} {sent.id} as {names.STREAM_COMMANDS} #{sent.seq}")
                    + Text(suffix, style="yellow")
                )
            else:
                emit(
                    {
                        "id": sent.id,
                        "type": sent.type,
                        "stream": names.STREAM_COMMANDS,
                        "seq": sent.seq,
                        "duplicate": sent.duplicate,
                    },
                    output,
                )
            return EXIT_OK
        if output == Format.TABLE:
            again = ", sent before" if sent.duplicate else ""
            status(f"sent {sent.type} {sent.id} (#{sent.seq}{again}), waiting for its outcome…")
        # A duplicate was first published earlier, so its outcome may already be in the log.
        start = 1 if sent.duplicate else before + 1
        outcome = await wait_for_outcome(
            log, sent.id, start_seq=start, within=within, registry=registry
        )
        if outcome is None:
            raise CliError(
                f"no outcome for {sent.id} within {within:g}s — is the Hive running? "
                "(`swarm status`)",
                code=EXIT_NO_OUTCOME,
            )
        if output == Format.TABLE:
            caused = await caused_events(log, outcome, start_seq=start) if outcome.accepted else []
            print_outcome(sent, outcome, caused)
        else:
            emit(outcome_document(outcome), output)
        return EXIT_OK if outcome.accepted else EXIT_FAILED


def register(app: typer.Typer, *, registry: Registry = REGISTRY) -> None:
    """Add `swarm publish` to `app`; `registry` decides which command types validate."""

    @app.command(
        "publish",
        help=(
            "Send a command and wait for its outcome.\n\n"
            "Exit codes: 0 accepted, 1 rejected, 2 invalid input (nothing sent), "
            "3 no outcome in time, 4 NATS unreachable."
        ),
    )
    def publish(
        type_: Annotated[
            str | None,
            typer.Argument(
                metavar="TYPE",
                help="Command type, e.g. swarm.cmd.agent.deploy.",
                show_default=False,
            ),
        ] = None,
        file: Annotated[
            str | None,
            typer.Option(
                "--file",
                "-f",
                help=(
                    "A command as JSON or YAML: a full CloudEvent or just {type, data}; "
                    "'-' reads stdin."
                ),
                show_default=False,
            ),
        ] = None,
        data: Annotated[
            str | None,
            typer.Option(
                "--data", "-d", help="The command's data as a JSON object.", show_default=False
            ),
        ] = None,
        sets: Annotated[
            list[str] | None,
            typer.Option(
                "--set",
                help="Set one data field: dotted.key=value (value parsed as JSON when it parses).",
                show_default=False,
            ),
        ] = None,
        validate: Annotated[
            bool,
            typer.Option(
                "--validate/--no-validate",
                help="Check the command against its schema before sending.",
            ),
        ] = True,
        wait: Annotated[
            bool, typer.Option("--wait/--no-wait", help="Wait for the command's outcome.")
        ] = True,
        timeout: Annotated[
            float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the outcome.")
        ] = 10.0,
        output: Annotated[
            Format, typer.Option("--output", "-o", help="Output format.")
        ] = Format.TABLE,
        nats_url: connect.NatsUrlOption = None,
    ) -> None:

        async def main() -> int:
            settings = connect.load_settings()
            document = load_document(file) if file is not None else None
            event = build_command(
                document,
                type_=type_,
                data=data,
                sets=sets or (),
                identity=settings.identity,
                registry=registry,
            )
            if validate:
                validate_command(event, registry)
            target = connect.resolve_nats_url(nats_url, settings)
            return await _publish(
                event,
                target=target,
                settings=settings,
                wait=wait,
                within=timeout,
                output=output,
                registry=registry,
            )

        code = run(main())
        if code != EXIT_OK:
            raise typer.Exit(code)
