"""`swarm pod`: the pods that run agents, what they offer and how much of it is in use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import typer
from rich.console import RenderableType

from swarm.cli import connect
from swarm.cli.output import Format, table
from swarm.cli.verbs import Nothing, OutputOption, WatchOption, listing, styled

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
        pods_table,
        output,
        watch=watch,
        title="pods",
    )


def pods_table(pods: Sequence[Mapping[str, Any]]) -> RenderableType:
    if not pods:
        return Nothing("no pods registered")
    rows = []
    for pod in pods:
        capacity = pod.get("capacity") or {}
        free = pod.get("free") or {}
        rows.append(
            [
                pod.get("pod_id"),
                styled(str(pod.get("status", ""))),
                pod.get("zone"),
                _used(capacity, free, "memory_mb", str),
                _used(capacity, free, "fuel_per_s", compact),
                _used(capacity, free, "slots", str),
                pod.get("replicas", 0),
                f"{pod.get('energy_cost', 0):g}",
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


def _used(capacity: Mapping[str, Any], free: Mapping[str, Any], key: str, fmt: Any) -> str:
    total, left = capacity.get(key), free.get(key)
    if not isinstance(total, int) or not isinstance(left, int):
        return "?"
    return f"{fmt(total - left)}/{fmt(total)}"


def compact(value: int) -> str:
    """1500000 -> 1.5M: fuel figures are too long to compare at a glance otherwise."""
    for size, suffix in _SUFFIXES:
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return str(value)
