"""Scheduler benchmark: market clearing against first-fit, with energy and price of each.

    .venv/bin/python bench/scheduler.py [--pools 1000] [--requests 10000] [--seed 7] [--json PATH]

One synthetic cluster (pools with varied capacity, zones, labels, a base price and an energy
cost drawn independently) and one backlog of pending replica requests (varied sizes, priorities,
bids and constraints), the same for every policy in the run. Each policy clears the whole
backlog in one go; measured per policy:

* placements/s (placements made / wall time of the clearing) — target >= 2,000/s for the market
  with 1,000 pools and 10,000 pending requests;
* utilisation of the cluster's memory afterwards, total energy (energy_cost x units placed) and
  total price (posted price x units placed) — how much energy the energy-aware market
  (each λ of `--energy-weights`) saves against price-only placement (λ = 0), and at what
  price. The saving depends on the load: with slack, λ steers work to efficient pools; as the
  cluster fills every pool is used and utilisation-driven prices dominate a small λ;
* the market through the scheduler's own planner (folded view, in-flight ledger, proposal ids),
  i.e. what `python -m services.scheduler` does per pass, minus the network.

First-fit is the baseline measured in the same run. Then (`--streaming-events`, 0 skips it) the
scheduler's processing rate on `swarm.kernel.streaming` (faust over JetStream) against a plain
asyncio pull loop over the same events, target >= 0.5x: `bench/streaming.py` (counting per key,
100 / 1,000 / 10,000 keys) and `bench/scheduler_intake.py` (the scheduler's own intake folding a
SWARM_EVENTS history into its tables). See the STREAMING HOOK below.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common
from schemas import event, events
from schemas.specs import AgentSpec, Capacity, ModuleRef, Placement, Resources
from services.scheduler.market import UNIT_MB, FirstFit, Market
from services.scheduler.planner import Planner
from services.scheduler.policies import Cleared, Need, Offer, Policy, Pricing

ZONES = ("eu-1", "eu-2", "us-1", "us-2")
PRICE_ONLY = "market, price only (λ=0)"


def aware_name(weight: float) -> str:
    return f"market, energy-aware (λ={weight:g})"


TARGET = 2000.0
#: The faust path's rate against the plain loop's.
STREAMING_TARGET = 0.5


@dataclass(frozen=True, slots=True)
class Workload:
    offers: list[Offer]
    needs: list[Need]


def workload(pools: int, requests: int, seed: int) -> Workload:
    rng = random.Random(seed)
    offers = []
    for i in range(pools):
        # Sized so that the default backlog fills about half the cluster's memory and slots.
        memory = rng.choice((1024, 2048, 4096, 8192))
        slots = rng.choice((8, 16, 32))
        labels = {"base-price": f"{rng.uniform(0.5, 2.0):.3f}"}
        if rng.random() < 0.2:
            labels["gpu"] = "yes"
        offers.append(
            Offer(
                f"pool-{i:05d}",
                True,
                memory,
                10**12,
                slots,
                rng.choice(ZONES),
                labels,
                round(rng.uniform(0.2, 2.0), 3),
                memory,
                10**12,
                slots,
            )
        )
    needs = []
    for i in range(requests):
        constrained = rng.random()
        needs.append(
            Need(
                f"agent-{i // 10}",
                f"agent-{i // 10}-{i % 10}",
                rng.choice((64, 64, 128, 256, 512)),
                1000,
                rng.choice((0, 0, 0, 10, 100)),
                rng.choice((None, None, 4.0, 8.0)),
                (("gpu", "yes"),) if constrained < 0.05 else (),
                (rng.choice(ZONES),) if 0.05 <= constrained < 0.15 else (),
                (),
                i + 1,
            )
        )
    return Workload(offers, needs)


def measure(policy: Policy, work: Workload, repeats: int) -> dict[str, Any]:
    runs = []
    cleared: list[Cleared] = []
    for _ in range(repeats):
        started = time.perf_counter()
        cleared = policy.clear(work.needs, work.offers, len(work.needs))
        runs.append(time.perf_counter() - started)
    best = min(runs)
    return summary(cleared, work, best, runs)


def summary(
    cleared: list[Cleared], work: Workload, best: float, runs: list[float]
) -> dict[str, Any]:
    placed = [c for c in cleared if c.choice is not None]
    capacity = sum(o.capacity_memory_mb for o in work.offers)
    used = sum(c.need.memory_mb for c in placed)
    return {
        "placed": len(placed),
        "waiting": len(work.needs) - len(placed),
        "seconds": best,
        "runs_s": runs,
        "placements_per_s": len(placed) / best if best > 0 else 0.0,
        "utilisation": used / capacity if capacity else 0.0,
        "energy": sum(c.energy for c in placed),
        "price": sum(c.price for c in placed),
        "units": sum(max(c.need.memory_mb / UNIT_MB, 1.0) for c in placed),
    }


def through_planner(work: Workload, pricing: Pricing) -> dict[str, Any]:
    """The market inside the scheduler's planner: fold the log, plan every request once."""
    planner = Planner(Market(pricing), preemption=False, recent=0)
    seq = 0

    def fold(payload: Any, aggregate_id: str) -> None:
        nonlocal seq
        seq += 1
        planner.apply(event(payload, aggregate_id=aggregate_id, source="bench"), seq, 0.0)

    for o in work.offers:
        fold(
            events.PodRegistered(
                pod_id=o.pod_id,
                capacity=Capacity(
                    memory_mb=o.capacity_memory_mb,
                    fuel_per_s=o.capacity_fuel_per_s,
                    slots=o.capacity_slots,
                ),
                labels=dict(o.labels),
                zone=o.zone,
                energy_cost=o.energy_cost,
                lease_s=3600,
            ),
            o.pod_id,
        )
    for need in work.needs:
        if need.replica_id.endswith("-0") or need.agent_id not in planner.view.agents:
            spec = AgentSpec(
                version="v1",
                module=ModuleRef(sha256="0" * 64),
                resources=Resources(memory_mb=need.memory_mb, fuel_per_s=need.fuel_per_s),
                priority=need.priority,
                placement=Placement(
                    max_price=need.max_price,
                    node_selector=dict(need.node_selector),
                    zones=list(need.zones),
                ),
            )
            fold(
                events.AgentDeployed(
                    agent_id=need.agent_id,
                    namespace="default",
                    name=need.agent_id,
                    spec=spec,
                    replicas=10,
                ),
                need.agent_id,
            )
        fold(
            events.ReplicaRequested(
                agent_id=need.agent_id, replica_id=need.replica_id, version="v1", reason="bench"
            ),
            need.agent_id,
        )
    started = time.perf_counter()
    plan = planner.plan(1.0, len(work.needs))
    elapsed = time.perf_counter() - started
    # Same request sizes per agent as its first replica: the view knows sizes per agent version.
    return summary(plan.cleared, work, elapsed, [elapsed])


async def streaming_rate(n: int) -> dict[str, Any] | None:
    # ---- STREAMING HOOK --------------------------------------------------------------------
    # The scheduler runs on swarm.kernel.streaming: its processing rate against a plain asyncio
    # pull loop over the same events, twice: the module's own counting bench
    # (`bench/streaming.py`, `run(n)`) and the scheduler's intake folding a SWARM_EVENTS history
    # (`bench/scheduler_intake.py`, `run(n)`). Each gives a plain row, then a faust row with
    # its ratio to plain (target >= 0.5).
    streaming = _sibling("streaming")
    intake = _sibling("scheduler_intake")
    counting: list[dict[str, Any]] = await streaming.run(n)
    folding: list[dict[str, Any]] = await intake.run(n)
    rows = [{"bench": "streaming", **r} for r in counting] + [
        {"bench": "scheduler_intake", **r} for r in folding
    ]
    ratios = [r["ratio"] for r in rows if "ratio" in r]
    return {
        "events": n,
        "target_ratio": STREAMING_TARGET,
        "met": all(r >= STREAMING_TARGET for r in ratios),
        "rows": rows,
    }
    # ---- END STREAMING HOOK ----------------------------------------------------------------


def _sibling(name: str) -> Any:
    """A module next to this file (bench/ is not a package)."""
    return importlib.import_module(f"bench.{name}")


def streaming_table(streaming: dict[str, Any]) -> Table:
    table = Table(
        title=f"Streaming: faust path vs plain pull loop, {streaming['events']:,} events (same run)"
    )
    for col in ("bench", "keys", "path", "events/s", "CPU us/event", "faust/plain", "start s"):
        table.add_column(col, justify="left" if col in ("bench", "path") else "right")
    for row in streaming["rows"]:
        ratio = row.get("ratio")
        start = row.get("start_s")
        table.add_row(
            row["bench"],
            f"{row['keys']:,}" if "keys" in row else "",
            row["path"],
            f"{row['events_per_s']:,.0f}",
            f"{row['cpu_us_per_event']:.1f}",
            "" if ratio is None else f"{ratio:.2f} (>= {STREAMING_TARGET})",
            ""
            if start is None
            else f"{start:.2f}"
            + (f" (restart {row['recover_s']:.2f})" if "recover_s" in row else ""),
        )
    return table


def main() -> None:
    parser = _common.arguments("scheduler", __doc__, raw=True)
    parser.add_argument("--pools", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--energy-weights", default="1,4", help="λ values of the energy-aware runs, comma-separated"
    )
    parser.add_argument(
        "--streaming-events",
        type=int,
        default=10000,
        help="events of the faust-vs-plain-loop comparisons (0 skips them)",
    )
    args = parser.parse_args()
    load_at_start = _common.load_average()
    # Wide enough for the table when stdout is a pipe (rich would assume 80 columns).
    console = Console(width=max(Console().width, 150))
    work = workload(args.pools, args.requests, args.seed)
    weights = [float(w) for w in args.energy_weights.split(",") if w.strip()]
    if not weights or any(w <= 0 for w in weights):
        parser.error("--energy-weights takes positive numbers, e.g. 1,4")
    energy_aware = Pricing(energy_weight=weights[0])
    results: dict[str, dict[str, Any]] = {}
    cases: list[tuple[str, Policy]] = [
        ("first-fit (baseline)", FirstFit(energy_aware)),
        (PRICE_ONLY, Market(Pricing(energy_weight=0.0))),
        *((aware_name(w), Market(Pricing(energy_weight=w))) for w in weights),
    ]
    for name, policy in cases:
        with console.status(name):
            results[name] = measure(policy, work, args.repeats)
    with console.status("market through the planner"):
        results["market via planner"] = through_planner(work, energy_aware)
    streaming = (
        asyncio.run(streaming_rate(args.streaming_events)) if args.streaming_events > 0 else None
    )

    table = Table(
        title=f"Scheduler: {args.pools:,} pools, {args.requests:,} pending requests (same run)"
    )
    for col in ("policy", "placements/s", "placed", "utilisation", "energy", "price", "target"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, r in results.items():
        target = f">= {TARGET:,.0f}/s" if name.startswith("market") else ""
        table.add_row(
            name,
            f"{r['placements_per_s']:,.0f}",
            f"{r['placed']:,}",
            f"{r['utilisation']:.1%}",
            f"{r['energy']:,.1f}",
            f"{r['price']:,.1f}",
            target,
        )
    console.print(table)
    price_only = results[PRICE_ONLY]
    saved: dict[str, dict[str, float]] = {}
    for w in weights:
        aware = results[aware_name(w)]
        saved[f"{w:g}"] = {
            "energy_saved": 1 - aware["energy"] / price_only["energy"],
            "price_change": aware["price"] / price_only["price"] - 1,
        }
        console.print(
            f"energy-aware (λ={w:g}) vs price-only: {saved[f'{w:g}']['energy_saved']:.1%} less "
            f"energy for {saved[f'{w:g}']['price_change']:+.1%} price"
        )
    if streaming is None:
        console.print("streaming: not measured (--streaming-events 0)")
    else:
        console.print(streaming_table(streaming))

    report: dict[str, Any] = {
        **_common.report(
            "scheduler",
            {
                "pools": args.pools,
                "requests": args.requests,
                "seed": args.seed,
                "repeats": args.repeats,
                "energy_weights": weights,
            },
            load_at_start,
        ),
        "target_placements_per_s": TARGET,
        "results": results,
        "energy_saved_vs_price_only": saved,
        "streaming": streaming,
    }
    _common.write_report(args.json, report, console)


if __name__ == "__main__":
    main()
