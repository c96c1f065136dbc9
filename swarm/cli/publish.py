"""`swarm publish`: send any command and wait for its one outcome.

This is what any client does, done by hand: put a CloudEvent on `SWARM_COMMANDS` with its id as
`Nats-Msg-Id`, then read the outcome the Hive writes to `swarm.evt.command.<id>.accepted|rejected`.
Local validation catches mistakes before they reach the log; `--no-validate` skips it so the
server's own rejection path can be exercised.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from swarm.cli import connect
from swarm.cli.output import (
    EXIT_FAILED,
    EXIT_NO_OUTCOME,
    EXIT_OK,
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

if TYPE_CHECKING:
    from schemas import Registry

    #: CloudEvents `source` of everything the CLI sends.
    from swarm.client.commands import DEFAULT_SOURCE as CLI_SOURCE

    # Building, checking, sending and awaiting commands is the client layer's, shared with the
    # HTTP API; these names stay importable from here for the verbs built on them.
    from swarm.client.commands import (
        CausedEvent,
        Outcome,
        Sent,
        apply_sets,
        build_command,
        caused_events,
        encode,
        outcome_subjects,
        parse_value,
        send,
        validate_command,
        wait_for_outcome,
    )
    from swarm.client.settings import Settings

__all__ = [
    "CLI_SOURCE",
    "CausedEvent",
    "Outcome",
    "Sent",
    "apply_sets",
    "build_command",
    "caused_events",
    "encode",
    "load_document",
    "outcome_document",
    "outcome_subjects",
    "parse_value",
    "print_outcome",
    "register",
    "send",
    "validate_command",
    "wait_for_outcome",
]

_FROM_CLIENT = frozenset(__all__) - {
    "load_document",
    "outcome_document",
    "print_outcome",
    "register",
}


def __getattr__(name: str) -> Any:
    # The client layer (schemas, nats-py, pydantic) is imported on first use, not by every
    # `swarm` call that imports this module to register `swarm publish`.
    if name in _FROM_CLIENT:
        from swarm.client import commands

        return getattr(commands, "DEFAULT_SOURCE" if name == "CLI_SOURCE" else name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- Reading a command document ------------------------------------------------------------------


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
        import yaml

        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CliError(f"{where} is neither JSON nor YAML: {exc}", code=EXIT_USAGE) from None
    if not isinstance(document, dict):
        raise CliError(
            f"{where} must hold one object (a CloudEvent, or just type and data)", code=EXIT_USAGE
        )
    return document


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
    from schemas import names
    from swarm.client import webhooks
    from swarm.client.commands import caused_events, send, wait_for_outcome

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
            log, sent.id, start_seq=start, within=within, registry=registry, command_seq=sent.seq
        )
        if outcome is None:
            raise CliError(
                f"no outcome for {sent.id} within {within:g}s — is the Hive running? "
                "(`swarm status`)",
                code=EXIT_NO_OUTCOME,
            )
        # A webhook's removal deletes its secret, as `swarm webhook rm` does.
        await webhooks.keep_books(log, event, outcome)
        if output == Format.TABLE:
            caused = await caused_events(log, outcome, start_seq=start) if outcome.accepted else []
            print_outcome(sent, outcome, caused)
        else:
            emit(outcome_document(outcome), output)
        return EXIT_OK if outcome.accepted else EXIT_FAILED


def register(app: typer.Typer, *, registry: Registry | None = None) -> None:
    """Add `swarm publish` to `app`; `registry` (default: all of `schemas`) decides which
    command types validate."""

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
            from schemas import REGISTRY
            from swarm.client import webhooks
            from swarm.client.commands import build_command, validate_command

            checked_by = REGISTRY if registry is None else registry
            settings = connect.load_settings()
            document = load_document(file) if file is not None else None
            event = build_command(
                document,
                type_=type_,
                data=data,
                sets=sets or (),
                identity=settings.identity,
                registry=checked_by,
            )
            refusal = webhooks.plain_command_problem(event["type"])
            if refusal is not None:
                raise CliError(
                    refusal,
                    code=EXIT_USAGE,
                    hint="`swarm webhook add URL --filter PATTERN` stores a secret and sends it",
                )
            if validate:
                validate_command(event, checked_by)
            target = connect.resolve_nats_url(nats_url, settings)
            return await _publish(
                event,
                target=target,
                settings=settings,
                wait=wait,
                within=timeout,
                output=output,
                registry=checked_by,
            )

        code = run(main())
        if code != EXIT_OK:
            raise typer.Exit(code)
