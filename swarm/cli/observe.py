"""`swarm observe`: what the Observer learnt about agents' behaviour.

`swarm observe similar <agent> [-k N]` lists the agents whose latest behaviour vector (one per
agent per Observer window, in Postgres: table agent_behaviour) is nearest by cosine distance to
the given agent's. Agents are named by id, by name, or as `namespace/name`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from swarm.cli import connect
from swarm.cli.output import (
    EXIT_UNAVAILABLE,
    CliError,
    Format,
    emit,
    errors_to_exit,
    stdout_console,
    table,
)
from swarm.cli.verbs import OutputOption

app = typer.Typer(help="Look at agent behaviour as the Observer sees it.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="observe")


def resolve_database_url(option: str | None) -> str:
    """`--database-url` > `SWARM_DATABASE_URL` > the running stack's state file."""
    found = connect.resolve_database_url(option)
    if found is None:
        raise CliError(
            "no database: behaviour vectors live in Postgres",
            code=EXIT_UNAVAILABLE,
            hint="start the stack with `swarm up`, or pass --database-url / SWARM_DATABASE_URL",
        )
    return found.url


@app.command()
def similar(
    agent: Annotated[str, typer.Argument(help="Agent id, name or namespace/name.")],
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="How many agents.")] = 5,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="PostgreSQL URL.", show_default=False)
    ] = None,
    output: OutputOption = Format.TABLE,
) -> None:
    """List the agents that behave most like AGENT (nearest latest behaviour vectors)."""
    from swarm.client.behaviour import similar_agents

    with errors_to_exit():
        found = similar_agents(resolve_database_url(database_url), agent, k)
        agent_id = found.agent_id
        similar = [
            {
                "agent_id": r.agent_id,
                "namespace": r.namespace,
                "name": r.name,
                "distance": r.distance,
                "window_end": r.window_end,
            }
            for r in found.similar
        ]
        if output != Format.TABLE:
            emit({"agent_id": agent_id, "similar": similar}, output)
            return
        stdout_console().print(
            table(
                ["AGENT", "NAMESPACE", "NAME", "DISTANCE", "SEEN"],
                [
                    [
                        f["agent_id"],
                        f["namespace"],
                        f["name"],
                        f"{f['distance']:.4f}",
                        f["window_end"],
                    ]
                    for f in similar
                ],
                title=f"agents behaving like {agent_id}",
            )
        )
