"""`swarm timeline export` and `import`: move a log, or part of one, to another stack, through a
file, as `swarm.client.transfer` writes and reads it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from swarm.cli import connect
from swarm.cli.output import EXIT_OK, EXIT_USAGE, CliError, run, status
from swarm.client.timeline import Filters
from swarm.client.transfer import export, import_stream, parse_batch, streams_in_order

if TYPE_CHECKING:
    # Imported where used: every `swarm` call registers these verbs (tests/test_cli_start.py).
    pass


def _read_file(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}", code=EXIT_USAGE) from None


# --- Verbs ---------------------------------------------------------------------------------------


def register(group: typer.Typer) -> None:
    """Add `swarm timeline export` and `swarm timeline import` to the timeline group."""

    @group.command("export")
    def export_cmd(
        file: Annotated[
            str, typer.Option("--file", "-f", help="Where to write the batch ('-' is stdout).")
        ] = "-",
        only: Annotated[
            str | None,
            typer.Option(
                "--only", help="Export only 'events' or only 'commands'.", show_default=False
            ),
        ] = None,
        subject: Annotated[
            list[str] | None,
            typer.Option(
                "--subject", "-s", help="NATS subject filter (repeatable).", show_default=False
            ),
        ] = None,
        type_: Annotated[
            str | None, typer.Option("--type", "-t", help="Type or glob.", show_default=False)
        ] = None,
        aggregate: Annotated[
            str | None, typer.Option("--aggregate", "-a", help="Aggregate.", show_default=False)
        ] = None,
        aggregate_id: Annotated[
            str | None, typer.Option("--id", help="Aggregate id.", show_default=False)
        ] = None,
        since: Annotated[
            str | None, typer.Option("--since", help="From this time.", show_default=False)
        ] = None,
        until: Annotated[
            str | None, typer.Option("--until", help="Up to this time.", show_default=False)
        ] = None,
        from_seq: Annotated[
            int | None,
            typer.Option(
                "--from-seq", min=1, help="First sequence (with --only).", show_default=False
            ),
        ] = None,
        to_seq: Annotated[
            int | None,
            typer.Option(
                "--to-seq", min=1, help="Last sequence (with --only).", show_default=False
            ),
        ] = None,
        nats_url: connect.NatsUrlOption = None,
    ) -> None:
        """Write the log (events, then commands) as a CloudEvents JSON batch."""
        from schemas import names

        async def main() -> int:
            if only not in (None, "events", "commands"):
                raise CliError("--only takes 'events' or 'commands'", code=EXIT_USAGE)
            streams = {
                None: list(streams_in_order()),
                "events": [names.STREAM_EVENTS],
                "commands": [names.STREAM_COMMANDS],
            }[only]
            if len(streams) > 1 and (from_seq is not None or to_seq is not None):
                raise CliError(
                    "--from-seq/--to-seq number one stream: add --only events|commands",
                    code=EXIT_USAGE,
                )
            filters = Filters.given(
                subjects=subject,
                since=since,
                until=until,
                type_glob=type_,
                aggregate=aggregate,
                aggregate_id=aggregate_id,
                from_seq=from_seq,
                to_seq=to_seq,
            )
            target, settings = connect.locate(nats_url)
            async with connect.session(target, settings, streams=streams) as log:
                if file == "-":
                    counts = await export(log, streams, filters, sys.stdout)
                else:
                    # Opened only once the log is reachable: a failed export leaves no empty file.
                    import asyncio

                    out = await asyncio.to_thread(Path(file).open, "w", encoding="utf-8")
                    with out:
                        counts = await export(log, streams, filters, out)
            wrapped = counts.wrapped
            if wrapped:
                where = ", ".join(f"{s}#{q}" for s, q in wrapped[:10])
                more = f" and {len(wrapped) - 10} more" if len(wrapped) > 10 else ""
                status(
                    f"{len(wrapped)} entries are not CloudEvents and travel wrapped as "
                    f"{names.EXPORT_RAW_TYPE}: {where}{more}"
                )
            status(f"exported {counts.written} entries")
            return EXIT_OK

        run(main())

    @group.command("import")
    def import_cmd(
        file: Annotated[
            str, typer.Argument(help="A file written by `swarm timeline export` ('-' is stdin).")
        ],
        force: Annotated[
            bool,
            typer.Option(
                "--force", help="Append what the target lacks even if it holds other entries."
            ),
        ] = False,
        nats_url: connect.NatsUrlOption = None,
    ) -> None:
        """Load an exported batch into this stack's log (events first, then commands)."""

        async def main() -> int:
            items = parse_batch(_read_file(file))
            target, settings = connect.locate(nats_url)
            async with connect.session(target, settings) as log:
                # A bare NATS server is a valid target: it gets Swarm's streams, as `swarm up`
                # and every Swarm service would create them.
                await log.ensure_streams()
                for stream in streams_in_order():
                    mine = [item for item in items if item.stream == stream]
                    counts = await import_stream(log, stream, mine, force=force)
                    status(counts.describe(stream))
            return EXIT_OK

        run(main())
