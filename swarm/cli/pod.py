"""`swarm pod`: the pods that run agents, what they offer and how much of it is in use."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import typer
from rich.console import RenderableType

from swarm.cli import connect
from swarm.cli.output import Format, table
from swarm.cli.verbs import Nothing, OutputOption, WatchOption, listing, styled

if TYPE_CHECKING:
    # Imported where an answer is read: every `swarm` call imports this module.
    from schemas.views import PodView

app = typer.Typer(help="Inspect the pods that run agents.", no_args_is_help=True)

_SUFFIXES = ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k"))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="pod")


@app.command("ls")
def ls(
    output: OutputOption = Format.TABLE,
    watch: WatchOption = False,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """List pods with their capacity in use (used/total) and the replicas placed on them."""
    listing(
        nats_url,
        "pods",
        lambda queries, floor: queries.pods(at_least=floor),
        _pods_drawn,
        output,
        watch=watch,
        title="pods",
    )


def _pods_drawn(pods: Sequence[Mapping[str, Any]]) -> RenderableType:
    """The Hive's answer (printed as it came with `-o json`) read as views, as a table."""
    from schemas.views import PodView
    from swarm.client.queries import parse_views

    return pods_table(parse_views(PodView, pods))


def pods_table(pods: Sequence[PodView]) -> RenderableType:
    if not pods:
        return Nothing("no pods registered")
    rows = []
    for pod in pods:
        capacity, free = pod.capacity, pod.free
        rows.append(
            [
                pod.pod_id,
                styled(pod.status),
                pod.zone,
                _used(capacity.memory_mb, free.memory_mb, str),
                _used(capacity.fuel_per_s, free.fuel_per_s, compact),
                _used(capacity.slots, free.slots, str),
                pod.replicas,
                f"{pod.energy_cost:g}",
            ]
        )
    columns = [
        "POD",
        "STATUS",
        "ZONE",
        "MEMORY MB",
        "FUEL/S",
        "SLOTS",
        "REPLICAS",
        "ENERGY COST",
    ]
    return table(columns, rows, title=None)


def _used(total: int, left: int, fmt: Callable[[int], str]) -> str:
    return f"{fmt(total - left)}/{fmt(total)}"


def compact(value: int) -> str:
    """1500000 -> 1.5M: fuel figures are too long to compare at a glance otherwise."""
    for size, suffix in _SUFFIXES:
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return str(value)
