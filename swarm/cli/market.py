"""`swarm market`: the scheduler's market — offers with their posted prices, recent clearings.

Answered by the running scheduler on `swarm.query.market.state` (core NATS request/reply): the
offers are its live view (free capacity after proposals in flight, price per 64 MB unit, energy
cost per unit), and the clearings are the latest it made, with the reason for each placement,
preemption or wait. Clearings are kept in the scheduler's memory, not on the audit log (they
are high volume); placements themselves are on the log as `replica_scheduled` with the same
reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import nats.errors
import typer
from rich.console import Group, RenderableType
from rich.text import Text

from schemas import names
from swarm.cli import connect
from swarm.cli.output import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, CliError, Format, table
from swarm.cli.pod import compact
from swarm.cli.verbs import OutputOption, WatchOption, finish, show

QUERY_TIMEOUT = 2.0

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

    async def main() -> int:
        settings = connect.load_settings()
        target = connect.resolve_nats_url(nats_url, settings)
        async with connect.session(target, settings, streams=()) as log:

            async def fetch() -> dict[str, Any]:
                return await ask_market(log.nc, limit)

            await show(fetch, draw, output, watch=watch, title="market")
        return EXIT_OK

    finish(main(), watching=watch)


async def ask_market(nc: Any, limit: int) -> dict[str, Any]:
    subject = names.QUERY_MARKET_STATE
    try:
        body = json.dumps({"limit": limit}).encode()
        reply = await nc.request(subject, body, timeout=QUERY_TIMEOUT)
    except nats.errors.NoRespondersError:
        raise _no_scheduler("nothing is subscribed") from None
    except nats.errors.TimeoutError:
        raise _no_scheduler(f"no answer within {QUERY_TIMEOUT:g}s") from None
    try:
        answer = json.loads(reply.data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise CliError(
            f"the scheduler's answer to {subject} is not a JSON object", code=EXIT_FAILED
        )
    if "error" in answer:
        raise CliError(str(answer["error"]), code=EXIT_FAILED)
    return answer


def _no_scheduler(why: str) -> CliError:
    return CliError(
        f"no scheduler answered {names.QUERY_MARKET_STATE}: {why}",
        code=EXIT_UNAVAILABLE,
        hint="is the scheduler running? (`swarm up` starts one; `python -m services.scheduler`)",
    )


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
