"""`swarm timeline verify`: print what `swarm.client.verify` finds wrong in the log, and where;
exit 1 when it finds anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from swarm.cli import connect
from swarm.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    StreamFormat,
    render,
    run,
    status,
    stdout_console,
    table,
)
from swarm.client.verify import Report, verify

if TYPE_CHECKING:
    pass


# --- Printing ------------------------------------------------------------------------------------


def print_report(report: Report, fmt: StreamFormat) -> None:
    from schemas import names

    if fmt == StreamFormat.JSON:
        typer.echo(render(report.as_json(), fmt))
    elif fmt == StreamFormat.JSONL:
        for finding in report.findings:
            typer.echo(render(finding.as_json(), fmt))
    elif report.findings:
        stdout_console().print(
            table(
                ["FINDING", "LOG", "SEQ", "DETAIL"],
                [
                    [
                        Text(f.kind, style="bold red"),
                        "commands" if f.stream == names.STREAM_COMMANDS else "events",
                        f.seq,
                        f.detail,
                    ]
                    for f in report.findings
                ],
                title=None,
            )
        )
    summary = f"checked {report.commands} commands and {report.events} events: " + (
        "no findings" if report.ok else f"{len(report.findings)} finding(s)"
    )
    if report.pending:
        summary += f"; {len(report.pending)} recent command(s) not decided yet"
    status(summary)


def register(group: typer.Typer) -> None:
    """Add `swarm timeline verify` to the timeline group."""

    @group.command("verify")
    def verify_cmd(
        grace: Annotated[
            float,
            typer.Option(
                "--grace",
                min=0,
                help="Seconds a new command may wait for its outcome before it counts as missing.",
            ),
        ] = 30.0,
        output: Annotated[
            StreamFormat, typer.Option("--output", "-o", help="Output format.")
        ] = StreamFormat.TABLE,
        nats_url: connect.NatsUrlOption = None,
    ) -> None:
        """Check the log: one outcome per command, no gaps, every event decodes, causes resolve.

        Exits 1 when anything is found.
        """

        async def main() -> int:
            from schemas import names

            target, settings = connect.locate(nats_url)
            streams = [names.STREAM_COMMANDS, names.STREAM_EVENTS]
            async with connect.session(target, settings, streams=streams) as log:
                report = await verify(log, grace=grace)
            print_report(report, output)
            return EXIT_OK if report.ok else EXIT_FAILED

        code = run(main())
        if code != EXIT_OK:
            raise typer.Exit(code)
