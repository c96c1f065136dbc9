"""Healing benchmark: what the reputation and healing policy cost the Hive's leader.

    .venv/bin/python bench/healing.py [--agents N] [--repeats N] [--json PATH]

Pure, in memory (no servers): the Hive calls these on its own state. Measured in this run, each
against a baseline on the same state:

* `heal.plan` (run by the reconcile loop every 0.25 s over every agent), with no unhandled
  finding and in the worst case (every agent with five unhandled findings), against the scan the
  reconcile loop already did before healing existed (every replica checked for a due restart);
* folding `agent.anomaly_detected` (recorded finding + trust update) and `replica_running`
  (phase + trust update), against folding `agent.status_changed` (no trust update).

Results go to bench/results/healing.json with machine info.
"""

from __future__ import annotations

import base64
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common
from schemas import Payload, event, events
from schemas.observer import AnomalyDetected, SignalEvidence
from schemas.specs import AgentSpec, ModuleRef
from swarm.domain import heal
from swarm.domain.evolve import evolve
from swarm.domain.state import Agent, Anomaly, HiveState, Replica

SPEC = AgentSpec(version="v1", module=ModuleRef(inline=base64.b64encode(b"\0asm\1\0\0\0").decode()))
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def state_of(agents: int, findings: int) -> HiveState:
    state = HiveState()
    for i in range(agents):
        agent = Agent(f"A{i}", "default", f"a{i}", SPEC, replicas_desired=2)
        for r in range(2):
            agent.replicas[f"A{i}-{r}"] = Replica(f"A{i}-{r}", "v1", phase="running")
        agent.anomalies = [Anomaly(f"X{i}-{j}", "loop", "info", 0.1, T0) for j in range(findings)]
        state.agents[agent.agent_id] = agent
    return state


def baseline_scan(state: HiveState, now: datetime) -> list[tuple[str, str]]:
    """The reconcile loop's restart check, as it was before healing."""
    due = []
    for agent in state.agents.values():
        for replica in agent.replicas.values():
            due_at = replica.restart_at
            if replica.phase == "crashed" and due_at is not None and due_at <= now:
                due.append((agent.agent_id, replica.replica_id))
    return due


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return runs


def fold_rate(agents: int, make: Callable[[int], Payload], repeats: int) -> list[float]:
    """Events folded per second into a fresh state of `agents` agents, one event each."""
    rates = []
    for _ in range(repeats):
        state = state_of(agents, 0)
        envs = [
            event(make(i), aggregate_id=f"A{i}", source="bench", time=T0 + timedelta(seconds=i))
            for i in range(agents)
        ]
        started = time.perf_counter()
        for seq, env in enumerate(envs, start=1):
            evolve(state, seq, env)
        rates.append(agents / (time.perf_counter() - started))
    return rates


def finding(i: int) -> Payload:
    return AnomalyDetected(
        anomaly_id=f"X{i}",
        agent_id=f"A{i}",
        detector="bench",
        score=0.5,
        severity="warning",
        kind="loop",
        window_start=T0,
        window_end=T0,
        signals=[SignalEvidence(signal="fuel", value=2, baseline=1, score=3, threshold=2)],
    )


def main() -> None:
    parser = _common.arguments("healing", __doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load_at_start = _common.load_average()
    n, repeats = args.agents, args.repeats
    now = T0 + timedelta(seconds=5)
    quiet, busy = state_of(n, 0), state_of(n, 5)

    plans = {
        "reconcile scan (baseline)": timed(lambda: baseline_scan(quiet, now), repeats),
        "heal.plan, no findings": timed(lambda: heal.plan(quiet, now), repeats),
        "heal.plan, 5 unhandled findings each": timed(lambda: heal.plan(busy, now), repeats),
    }
    folds = {
        "status_changed (baseline)": fold_rate(
            n,
            lambda i: events.AgentStatusChanged(
                agent_id=f"A{i}", status="running", previous="starting", reason="bench"
            ),
            repeats,
        ),
        "replica_running (+ trust)": fold_rate(
            n,
            lambda i: events.ReplicaRunning(agent_id=f"A{i}", replica_id=f"A{i}-0", pod_id="p"),
            repeats,
        ),
        "anomaly_detected (+ trust)": fold_rate(n, finding, repeats),
    }

    base_plan = statistics.median(plans["reconcile scan (baseline)"])
    base_fold = statistics.median(folds["status_changed (baseline)"])
    results: list[dict[str, Any]] = []
    table = Table(title=f"healing, {n} agents x 2 replicas (median of {repeats})")
    for column in ("case", "value", "vs baseline"):
        table.add_column(column)
    for case, runs in plans.items():
        ms = statistics.median(runs) * 1000
        ratio = statistics.median(runs) / base_plan
        results.append({"case": case, "ms": ms, "over_baseline": ratio, "runs_s": runs})
        table.add_row(case, f"{ms:.2f} ms per pass", f"{ratio:.1f}x")
    for case, rates in folds.items():
        rate = statistics.median(rates)
        ratio = rate / base_fold
        results.append({"case": case, "events_per_s": rate, "over_baseline": ratio, "runs": rates})
        table.add_row(case, f"{rate:,.0f} events/s", f"{ratio:.2f}x")
    Console().print(table)

    report = {
        **_common.report("healing", {"agents": n, "repeats": repeats}, load_at_start),
        "results": results,
    }
    _common.write_report(args.json, report)


if __name__ == "__main__":
    main()
