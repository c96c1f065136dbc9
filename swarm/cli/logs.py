"""`swarm logs <agent>`: an agent's log lines, filtered by level, text and age, or followed.

The lines are in the SWARM_LOGS stream on `swarm.logs.<pod>.<level>`, so the level filter is a
subject filter applied by the server and `--since` is a JetStream seek by time: only matching
lines cross the wire. `swarm agent logs` is the same command under the agent verbs.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import typer

from swarm.cli import connect
from swarm.cli.limits import LOG_LEVELS
from swarm.cli.output import EXIT_OK
from swarm.cli.verbs import DEFAULT_NAMESPACE, AgentNameArgument, AgentNamespaceOption, finish
from swarm.client.text import printable

#: `-o` for logs: a line of text per entry, or a JSON object per line.
LogFormat = Literal["text", "json"]

FollowOption = Annotated[
    bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")
]
LevelOption = Annotated[
    str | None,
    typer.Option(
        "--level", help=f"Lowest level shown, one of {', '.join(LOG_LEVELS)}.", show_default="all"
    ),
]
GrepOption = Annotated[
    str | None,
    typer.Option("--grep", help="Only lines whose message contains TEXT.", metavar="TEXT"),
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Only lines from this time on: an age (30s, 10m, 2h) or RFC 3339.",
        show_default="all kept",
    ),
]
LogOutputOption = Annotated[LogFormat, typer.Option("--output", "-o", help="Output format.")]


def register(root: typer.Typer) -> None:
    root.command("logs")(logs)


def register_agent_verb(agent_app: typer.Typer) -> None:
    """`swarm agent logs`: the same command under the agent verbs, its help saying so."""
    agent_app.command("logs", help=f"{inspect.getdoc(logs)} Same as `swarm logs`.")(logs)


def logs(
    name: AgentNameArgument,
    namespace: AgentNamespaceOption = None,
    follow: FollowOption = False,
    level: LevelOption = None,
    grep: GrepOption = None,
    since: SinceOption = None,
    output: LogOutputOption = "text",
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Print an agent's log lines (all its replicas): time, level, replica, message.

    Lines are kept in the SWARM_LOGS stream for as long as its limits allow; logging is lossy
    by design, so a busy agent may have lines missing.
    """
    from schemas import names
    from swarm.cli.queries import HiveQueries
    from swarm.client.logs import agent_lines, shown_levels
    from swarm.client.queries import read_floor
    from swarm.client.text import parse_time

    ns = namespace or DEFAULT_NAMESPACE

    async def main() -> int:
        levels = shown_levels(level)
        start = parse_time(since) if since else None
        target, settings = connect.locate(nats_url)
        streams = (names.STREAM_EVENTS, names.STREAM_LOGS)
        async with connect.session(target, settings, streams=streams) as log:
            agent = await HiveQueries(log).agent(ns, name, at_least=await read_floor(log))
            async for entry in agent_lines(
                log, str(agent["agent_id"]), levels=levels, grep=grep, since=start, follow=follow
            ):
                typer.echo(format_line(entry, output))
                sys.stdout.flush()
        return EXIT_OK

    finish(main(), watching=follow)


def format_line(entry: Mapping[str, Any], output: LogFormat) -> str:
    from swarm.client.logs import log_message

    if output == "json":
        return json.dumps(dict(entry), ensure_ascii=False)
    level = str(entry.get("level", "info"))
    replica = entry.get("replica_id", "?")
    return f"{entry['time']} {level.upper():<5} {replica} {printable(log_message(entry))}"
