"""`swarm market`: the scheduler's market — offers with their posted prices, recent clearings.

Answered by the running scheduler on `swarm.query.market.state` (core NATS request/reply): the
offers are its live view (free capacity after proposals in flight, price per 64 MB unit, energy
cost per unit), and the clearings are the latest it made, with the reason for each placement,
preemption or wait. Clearings are kept in the scheduler's memory, not on the audit log (they
are high volume); placements themselves are on the log as `replica_scheduled` with the same
reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.text import Text

from swarm.cli import connect
from swarm.cli.output import EXIT_OK, Format, table
from swarm.cli.pod import compact
from swarm.cli.verbs import OutputOption, WatchOption, finish, show

LimitOption = Annotated[
    int, typer.Option("--limit", "-n", min=0, max=10_000, help="Recent clearings to show.")
]


def register(root: typer.Typer) -> None:
    root.command("market")(market)


def market(
    limit: LimitOption = 20,
    output: OutputOption = Format.TABLE,
    watch: WatchOption = False,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Show the market: offers (pod, free, price, energy, labels) and recent clearings."""
    from swarm.client.market import ask_market

    async def main() -> int:
        target, settings = connect.locate(nats_url)
        async with connect.session(target, settings, streams=()) as log:

            async def fetch() -> dict[str, Any]:
                return await ask_market(log, limit)

            await show(fetch, draw, output, watch=watch, title="market")
        return EXIT_OK

    finish(main(), watching=watch)


def draw(state: Mapping[str, Any]) -> RenderableType:
    pricing = state.get("pricing") or {}
    heading = Text(
        f"policy {state.get('policy')} · base price {pricing.get('base_price')} · "
        f"slope {pricing.get('slope')} · λ (energy weight) {pricing.get('energy_weight')} · "
        f"{state.get('waiting', 0)} waiting · {state.get('in_flight', 0)} in flight",
        style="dim",
    )
    return Group(heading, offers_table(state.get("offers") or []), clearings_table(state))


def offers_table(offers: Sequence[Mapping[str, Any]]) -> RenderableType:
    if not offers:
        return Text("no offers: no pods registered", style="dim")
    rows = []
    for o in offers:
        free = o.get("free") or {}
        labels = o.get("labels") or {}
        rows.append(
            [
                o.get("pod_id"),
                "ready" if o.get("ready") else "lost",
                o.get("zone"),
                free.get("memory_mb"),
                compact(int(free.get("fuel_per_s") or 0)),
                free.get("slots"),
                f"{float(o.get('utilisation') or 0):.0%}",
                f"{float(o.get('price_per_unit') or 0):.3f}",
                f"{float(o.get('energy_per_unit') or 0):g}",
                ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            ]
        )
    columns = [
        "POD",
        "STATUS",
        "ZONE",
        "FREE MB",
        "FREE FUEL/S",
        "FREE SLOTS",
        "UTIL",
        "PRICE/UNIT",
        "ENERGY/UNIT",
        "LABELS",
    ]
    return table(columns, rows, title="offers")


def clearings_table(state: Mapping[str, Any]) -> RenderableType:
    clearings = state.get("clearings") or []
    if not clearings:
        return Text("no clearings yet", style="dim")
    rows = []
    for c in reversed(clearings):  # newest first
        at = c.get("at")
        when = (
            datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")
            if isinstance(at, int | float)
            else ""
        )
        rows.append(
            [
                when,
                c.get("replica_id"),
                c.get("priority"),
                c.get("outcome"),
                c.get("pod_id") or "",
                f"{c.get('price', 0):.2f}" if c.get("outcome") == "proposed" else "",
                c.get("reason"),
            ]
        )
    columns = ["AT", "REPLICA", "PRIORITY", "OUTCOME", "POD", "PRICE", "REASON"]
    return table(columns, rows, title="recent clearings (newest first)")
