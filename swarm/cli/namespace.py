"""`swarm namespace`: create namespaces, change their quotas, list them.

A quota caps what a namespace's agents may ask for (agents, replicas, memory, fuel); the Hive
checks it on every deploy, scale and rollout and names the limit that refused one.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import RenderableType

from swarm.cli import connect
from swarm.cli.output import EXIT_OK, EXIT_USAGE, CliError, Format, table
from swarm.cli.verbs import (
    Nothing,
    OutputOption,
    TimeoutOption,
    change,
    conclude,
    finish,
    listing,
)

if TYPE_CHECKING:
    # Imported where an answer is read: every `swarm` call imports this module.
    from schemas.specs import Quota
    from schemas.views import NamespaceView

app = typer.Typer(help="Create namespaces and set their quotas.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="namespace")


class Limit(enum.StrEnum):
    """A quota limit, as named by its option (and, with `_`, in the quota and the rule)."""

    MAX_AGENTS = "max-agents"
    MAX_REPLICAS = "max-replicas"
    MAX_MEMORY_MB = "max-memory-mb"
    MAX_FUEL_PER_S = "max-fuel-per-s"

    @property
    def field(self) -> str:
        return self.value.replace("-", "_")


NameArgument = Annotated[str, typer.Argument(help="The namespace's name.", show_default=False)]
MaxAgents = Annotated[
    int | None,
    typer.Option("--max-agents", min=0, help="Most agents.", show_default="unlimited"),
]
MaxReplicas = Annotated[
    int | None,
    typer.Option(
        "--max-replicas", min=0, help="Most desired replicas in all.", show_default="unlimited"
    ),
]
MaxMemory = Annotated[
    int | None,
    typer.Option(
        "--max-memory-mb", min=0, help="Most memory (MB) in all.", show_default="unlimited"
    ),
]
MaxFuel = Annotated[
    int | None,
    typer.Option(
        "--max-fuel-per-s", min=0, help="Most fuel per second in all.", show_default="unlimited"
    ),
]


def _limits(
    max_agents: int | None,
    max_replicas: int | None,
    max_memory_mb: int | None,
    max_fuel_per_s: int | None,
) -> dict[str, int]:
    given = {
        Limit.MAX_AGENTS.field: max_agents,
        Limit.MAX_REPLICAS.field: max_replicas,
        Limit.MAX_MEMORY_MB.field: max_memory_mb,
        Limit.MAX_FUEL_PER_S.field: max_fuel_per_s,
    }
    return {key: value for key, value in given.items() if value is not None}


@app.command("create")
def create(
    name: NameArgument,
    max_agents: MaxAgents = None,
    max_replicas: MaxReplicas = None,
    max_memory_mb: MaxMemory = None,
    max_fuel_per_s: MaxFuel = None,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Create a namespace; limits left out are unlimited."""
    quota = _limits(max_agents, max_replicas, max_memory_mb, max_fuel_per_s)
    change(
        lambda swarm: swarm.namespaces.create(name, quota=quota),
        what=f"creating namespace {name}",
        done=f"namespace {name} created ({_quota_text(quota)})",
        namespace=name,
        timeout=timeout,
        output=output,
        nats_url=nats_url,
    )


@app.command("update")
def update(
    name: NameArgument,
    max_agents: MaxAgents = None,
    max_replicas: MaxReplicas = None,
    max_memory_mb: MaxMemory = None,
    max_fuel_per_s: MaxFuel = None,
    unset: Annotated[
        list[Limit] | None,
        typer.Option("--unset", help="Make this limit unlimited (repeatable).", show_default=False),
    ] = None,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Change some limits of a namespace's quota; the others stay as they are.

    Agents already running keep running; the new limits apply to the next request.
    """
    from schemas import names

    changes: dict[str, int | None] = dict(
        _limits(max_agents, max_replicas, max_memory_mb, max_fuel_per_s)
    )
    for limit in unset or ():
        if limit.field in changes:
            raise CliError(f"--{limit} is both set and unset", code=EXIT_USAGE)
        changes[limit.field] = None

    async def main() -> int:
        if not changes:
            raise CliError(
                "nothing to change: give limits (--max-agents N, …) or --unset LIMIT",
                code=EXIT_USAGE,
            )
        settings = connect.load_settings()
        streams = (names.STREAM_COMMANDS, names.STREAM_EVENTS)
        async with connect.client(nats_url, settings, streams=streams, timeout=timeout) as swarm:
            quota = await swarm.namespaces.quota_with(name, changes)
            issued = await swarm.namespaces.update(name, quota=quota)
        conclude(
            issued,
            output,
            what=f"updating namespace {name}",
            done=f"namespace {name} updated ({_quota_text(quota)})",
            namespace=name,
        )
        return EXIT_OK

    finish(main())


@app.command("ls")
def ls(
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """List namespaces with their quotas and how many agents each holds."""
    listing(
        nats_url,
        "namespaces",
        lambda queries, floor: queries.namespaces(at_least=floor),
        _namespaces_drawn,
        output,
    )


def _namespaces_drawn(namespaces: Sequence[Mapping[str, Any]]) -> RenderableType:
    """The Hive's answer (printed as it came with `-o json`) read as views, as a table."""
    from schemas.views import NamespaceView
    from swarm.client.queries import parse_views

    return namespaces_table(parse_views(NamespaceView, namespaces))


def namespaces_table(namespaces: Sequence[NamespaceView]) -> RenderableType:
    if not namespaces:
        return Nothing("no namespaces")
    rows = [
        [ns.name, ns.agents] + [_limit_text(v) for v in _limits_of(ns.quota)] for ns in namespaces
    ]
    columns = ["NAME", "AGENTS", "MAX AGENTS", "MAX REPLICAS", "MAX MEMORY MB", "MAX FUEL/S"]
    return table(columns, rows, title=None)


def _limits_of(quota: Quota) -> tuple[int | None, ...]:
    """The quota's limits in `Limit`'s order (the table's columns), read by attribute so that a
    renamed quota field is a type error, not a blank column."""
    return (quota.max_agents, quota.max_replicas, quota.max_memory_mb, quota.max_fuel_per_s)


def _limit_text(value: int | None) -> str:
    return "unlimited" if value is None else f"{value:,}"


def _quota_text(quota: Mapping[str, Any]) -> str:
    if not quota:
        return "no limits"
    return ", ".join(f"{key.replace('_', '-')} {value:,}" for key, value in quota.items())
