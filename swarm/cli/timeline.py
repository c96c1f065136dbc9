"""`swarm timeline`: list the log — events, and commands on request — filtered, in order.

What is read, and how, is `swarm.client.timeline`'s; this module prints it. An entry whose body
cannot be decoded is shown with a marker in place of its type, beside why and its first bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from swarm.cli import connect
from swarm.cli.output import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Column,
    RowPrinter,
    StreamFormat,
    render,
    run,
    status,
)
from swarm.client.text import printable as printable
from swarm.client.timeline import Filters, LogEntry, read, summarize

if TYPE_CHECKING:
    from swarm.client.settings import Settings

#: Entries not decodable as a CloudEvent show this in place of their type.
UNDECODABLE = "(undecodable)"


# --- Printing ------------------------------------------------------------------------------------


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def table_columns(multi_stream: bool) -> list[Column]:
    columns = [
        Column("SEQ", width=7, justify="right"),
        Column("TIME", width=23),
        Column("TYPE", width=30),
        Column("AGGREGATE/ID", width=36),
        Column("DATA", min_width=24),
        Column("CORRELATION", width=26),
    ]
    if multi_stream:
        columns.insert(0, Column("LOG", width=8))
    return columns


def table_row(entry: LogEntry, *, multi_stream: bool) -> list[Any]:
    envelope = entry.envelope
    aggregate = entry.aggregate
    where = f"{aggregate[0]}/{aggregate[1]}" if aggregate else entry.subject
    if envelope is None:
        raw = printable(entry.raw[:60].decode("utf-8", errors="replace"))
        cells: list[Any] = [
            entry.seq,
            _time(entry.time),
            Text(UNDECODABLE, style="bold yellow"),
            where,
            Text(f"{entry.error} | {raw}", style="yellow"),
            "",
        ]
    else:
        cells = [
            entry.seq,
            _time(entry.time),
            envelope.type,
            where,
            summarize(envelope.data),
            envelope.correlationid or "",
        ]
    if multi_stream:
        from schemas import names

        cells.insert(0, "commands" if entry.stream == names.STREAM_COMMANDS else "events")
    return cells


class Printer:
    """Prints entries one at a time in the chosen format (all of them stream)."""

    def __init__(self, fmt: StreamFormat, *, multi_stream: bool) -> None:
        self.fmt = fmt
        self.multi_stream = multi_stream
        self.count = 0
        self._rows = RowPrinter(table_columns(multi_stream)) if fmt == StreamFormat.TABLE else None

    def start(self) -> None:
        if self._rows is not None:
            self._rows.header()
        elif self.fmt == StreamFormat.JSON:
            typer.echo("[", nl=False)

    def entry(self, entry: LogEntry) -> None:
        if self._rows is not None:
            self._rows.row(table_row(entry, multi_stream=self.multi_stream))
        elif self.fmt == StreamFormat.JSON:
            # A streamed array: items go out as they are read, never held in memory.
            text = render(entry.as_json(), StreamFormat.JSONL)
            typer.echo(("\n  " if self.count == 0 else ",\n  ") + text, nl=False)
        else:
            typer.echo(render(entry.as_json(), StreamFormat.JSONL))
        self.count += 1

    def finish(self) -> None:
        if self.fmt == StreamFormat.JSON:
            typer.echo("\n]" if self.count else "]")
        elif self.fmt == StreamFormat.TABLE and self.count == 0:
            status("no entries match")


# --- The verb ------------------------------------------------------------------------------------


async def _timeline(
    *,
    target: connect.NatsTarget,
    settings: Settings,
    streams: Sequence[str],
    filters: Filters,
    follow: bool,
    limit: int | None,
    output: StreamFormat,
) -> int:
    async with connect.session(target, settings, streams=streams) as log:
        printer = Printer(output, multi_stream=len(streams) > 1)
        printer.start()
        if limit != 0:
            async with aclosing(read(log, streams, filters, follow=follow)) as entries:
                async for entry in entries:
                    printer.entry(entry)
                    if limit is not None and printer.count >= limit:
                        break
        printer.finish()
    return EXIT_OK


def register(app: typer.Typer) -> None:
    """Add `swarm timeline` and its verbs (diff, verify, export, import) to `app`."""
    # Imported here, not at the top: other verbs import this module (`printable`) and need none
    # of them.
    from swarm.cli import logcheck, timetravel, transfer

    group = typer.Typer(
        help="Read the log: list it, rebuild the Hive's state at a point, check, export, import."
    )

    @group.callback(invoke_without_command=True)
    def timeline(
        ctx: typer.Context,
        subject: Annotated[
            list[str] | None,
            typer.Option(
                "--subject",
                "-s",
                help="NATS subject filter, wildcards * and > (repeatable).",
                show_default=False,
            ),
        ] = None,
        type_: Annotated[
            str | None,
            typer.Option(
                "--type",
                "-t",
                help="CloudEvents type, exact or a glob such as 'swarm.agent.*'.",
                show_default=False,
            ),
        ] = None,
        aggregate: Annotated[
            str | None,
            typer.Option("--aggregate", "-a", help="Aggregate, e.g. agent.", show_default=False),
        ] = None,
        aggregate_id: Annotated[
            str | None,
            typer.Option(
                "--id", help="Aggregate id (a command's id shows its outcome).", show_default=False
            ),
        ] = None,
        correlation: Annotated[
            str | None,
            typer.Option(
                "--correlation",
                help="Only what one command set off: entries with this id, correlation or cause.",
                show_default=False,
            ),
        ] = None,
        commands: Annotated[
            bool, typer.Option("--commands", help="Show commands instead of events.")
        ] = False,
        all_: Annotated[
            bool, typer.Option("--all", help="Show commands and events, merged by time.")
        ] = False,
        since: Annotated[
            str | None,
            typer.Option(
                "--since",
                help="From this time: RFC 3339 or an age (10m, 2h, 1d).",
                show_default=False,
            ),
        ] = None,
        until: Annotated[
            str | None,
            typer.Option(
                "--until", help="Up to this time: RFC 3339 or an age.", show_default=False
            ),
        ] = None,
        from_seq: Annotated[
            int | None,
            typer.Option("--from-seq", min=1, help="First stream sequence.", show_default=False),
        ] = None,
        to_seq: Annotated[
            int | None,
            typer.Option("--to-seq", min=1, help="Last stream sequence.", show_default=False),
        ] = None,
        limit: Annotated[
            int | None,
            typer.Option(
                "--limit", "-n", min=0, help="Stop after this many entries.", show_default=False
            ),
        ] = None,
        follow: Annotated[
            bool, typer.Option("--follow", "-F", help="Keep printing new entries until Ctrl-C.")
        ] = False,
        at: Annotated[
            str | None,
            typer.Option(
                "--at",
                help="Show the Hive's state at this sequence (1234) or time, rebuilt from the log.",
                show_default=False,
            ),
        ] = None,
        output: Annotated[
            StreamFormat, typer.Option("--output", "-o", help="Output format.")
        ] = StreamFormat.TABLE,
        nats_url: connect.NatsUrlOption = None,
    ) -> None:
        """List what is in the log, oldest first (or, with --at, the state at a point)."""
        if ctx.invoked_subcommand is not None:
            return

        async def main() -> int:
            from schemas import names

            if at is not None:
                listing = {
                    "--subject": subject,
                    "--type": type_,
                    "--aggregate": aggregate,
                    "--id": aggregate_id,
                    "--correlation": correlation,
                    "--since": since,
                    "--until": until,
                    "--from-seq": from_seq,
                    "--to-seq": to_seq,
                    "--limit": limit,
                    "--commands": commands or None,
                    "--all": all_ or None,
                    "--follow": follow or None,
                }
                given = [n for n, v in listing.items() if v is not None and v != []]
                if given:
                    raise CliError(
                        f"--at shows the whole state at one point; {', '.join(given)} filter "
                        "a listing",
                        code=EXIT_USAGE,
                        hint="use `swarm timeline diff A B` to see what changed between points",
                    )
                from swarm.client.timetravel import Point

                point = Point.parse(at)
                target, settings = connect.locate(nats_url)
                return await timetravel.show_at(
                    target=target, settings=settings, point=point, output=output
                )
            if commands and all_:
                raise CliError("give --commands or --all, not both", code=EXIT_USAGE)
            if all_:
                streams = [names.STREAM_EVENTS, names.STREAM_COMMANDS]
            elif commands:
                streams = [names.STREAM_COMMANDS]
            else:
                streams = [names.STREAM_EVENTS]
            if len(streams) > 1 and (from_seq is not None or to_seq is not None):
                raise CliError(
                    "--from-seq/--to-seq number one stream; with --all use --since/--until",
                    code=EXIT_USAGE,
                )
            if follow and output == StreamFormat.JSON:
                raise CliError(
                    "-o json prints one array, which --follow never closes",
                    code=EXIT_USAGE,
                    hint="use -o jsonl (one JSON object per line) or -o table",
                )
            for name, value in (("--aggregate", aggregate), ("--id", aggregate_id)):
                if value is not None and not names.is_token(value):
                    raise CliError(f"{name} {value!r} is not a single token", code=EXIT_USAGE)
            filters = Filters.given(
                subjects=subject,
                since=since,
                until=until,
                type_glob=type_,
                aggregate=aggregate,
                aggregate_id=aggregate_id,
                correlation=correlation,
                from_seq=from_seq,
                to_seq=to_seq,
            )
            target, settings = connect.locate(nats_url)
            return await _timeline(
                target=target,
                settings=settings,
                streams=streams,
                filters=filters,
                follow=follow,
                limit=limit,
                output=output,
            )

        run(main())

    timetravel.register(group)
    logcheck.register(group)
    transfer.register(group)
    app.add_typer(group, name="timeline")
