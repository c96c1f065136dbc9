"""The scheduler's intake: its StreamApp (faust + changelog tables) against a plain pull loop.

    .venv/bin/python bench/scheduler_intake.py [--events N] [--repeats R] [--batch B]

Starts its own nats-server and appends a synthetic SWARM_EVENTS history of about N events: pods
registered, agents deployed, and for each replica `replica_requested`, `replica_scheduled`,
`replica_starting`, `replica_running` and the Hive's `command.accepted` of its proposal (an
event the scheduler does not fold). Then both paths fold it into a fresh market `Planner`:

* plain: the loop `services/scheduler/service.py` ran before the streaming module, an
  ordered, ack-less reader (`fetch(batch)`), events skipped by subject or decoded strictly and
  folded with `Planner.apply`. No state survives a crash: a restart replays the whole log.
* faust: the scheduler's `Intake` on `swarm.kernel.streaming.StreamApp` (app `scheduler`):
  the durable consumer, faust channel and agent, the same fold, and the rows of the `pods`,
  `agents` and `replicas` tables each event touched written to the changelog with the
  position before each batch is acked. Its start is timed separately, and so is a restart on
  the tables it left (`recover_s`: recovery from the changelog instead of a replay of the log;
  the plain loop's restart is its whole run again).

Both must end with the same view (checked). Median of `--repeats`; the ratio is faust / plain
events per second (target >= 0.5). `bench/scheduler.py` includes this via `run(n)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nats.js.errors import NotFoundError

from bench import streamapp
from bench.streamapp import Run
from schemas import REGISTRY, CommandAccepted, Payload, commands, event, events, names
from schemas.specs import AgentSpec, Capacity, ModuleRef, Resources
from services.scheduler.intake import FOLDED, Intake
from services.scheduler.market import Market
from services.scheduler.planner import Planner
from services.scheduler.policies import Pricing
from services.scheduler.tables import rows_of
from swarm.devstack.embedded import EmbeddedNats
from swarm.kernel.eventlog import AppendRequest, EventLog
from swarm.kernel.settings import Settings

TARGET_RATIO = 0.5
PODS = 100
REPLICAS_PER_AGENT = 10
_WASM = "AGFzbQEAAAA="


def _history(n: int) -> list[tuple[Payload, str]]:
    """(payload, aggregate id) of about `n` events, as the Hive would write them."""
    out: list[tuple[Payload, str]] = []
    for p in range(PODS):
        pod_id = f"pod-{p}"
        capacity = Capacity(memory_mb=1 << 20, fuel_per_s=10**12, slots=10_000)
        out.append(
            (
                events.PodRegistered(
                    pod_id=pod_id, capacity=capacity, zone="eu-1", energy_cost=1.0, lease_s=10
                ),
                pod_id,
            )
        )
    spec = AgentSpec(
        version="v1", module=ModuleRef(inline=_WASM), resources=Resources(memory_mb=64)
    )
    replica = 0
    while len(out) < n:
        agent_id = f"agent-{replica // REPLICAS_PER_AGENT}"
        if replica % REPLICAS_PER_AGENT == 0:
            deployed = events.AgentDeployed(
                agent_id=agent_id,
                namespace="default",
                name=agent_id,
                spec=spec,
                replicas=REPLICAS_PER_AGENT,
            )
            out.append((deployed, agent_id))
        replica_id = f"{agent_id}-{replica % REPLICAS_PER_AGENT}"
        pod_id = f"pod-{replica % PODS}"
        command_id = f"place-{replica}"
        out += [
            (
                events.ReplicaRequested(
                    agent_id=agent_id, replica_id=replica_id, version="v1", reason="deploy"
                ),
                agent_id,
            ),
            (
                events.ReplicaScheduled(
                    agent_id=agent_id, replica_id=replica_id, pod_id=pod_id, policy="m", reason="b"
                ),
                agent_id,
            ),
            (
                CommandAccepted(command_id=command_id, command_type=commands.ProposePlacement.TYPE),
                command_id,
            ),
            (
                events.ReplicaStarting(agent_id=agent_id, replica_id=replica_id, pod_id=pod_id),
                agent_id,
            ),
            (
                events.ReplicaRunning(agent_id=agent_id, replica_id=replica_id, pod_id=pod_id),
                agent_id,
            ),
        ]
        replica += 1
    return out


def _planner() -> Planner:
    return Planner(Market(Pricing()), preemption=True)


def _wanted() -> frozenset[tuple[str, str]]:
    pairs = set()
    for type_ in FOLDED:
        entry = REGISTRY.get(type_)
        if entry is not None and entry.aggregate and entry.event:
            pairs.add((entry.aggregate, entry.event))
    return frozenset(pairs)


async def _plain(log: EventLog, n: int, batch: int) -> tuple[Run, Planner]:
    planner = _planner()
    wanted = _wanted()
    cpu, wall = time.process_time(), time.perf_counter()
    reader = await log.reader(names.STREAM_EVENTS, start_seq=1, batch=batch)
    seen = 0
    try:
        while seen < n:
            deliveries = await reader.fetch(batch, timeout=1.0)
            now = time.monotonic()
            for d in deliveries:
                parts = names.parse_event_subject(d.subject)
                if parts is None or (parts[0], parts[2]) not in wanted:
                    planner.skip(d.stream_seq)
                else:
                    planner.apply(d.decode(), d.stream_seq, now)
            seen += len(deliveries)
    finally:
        await reader.close()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Run(n / wall, cpu / n * 1e6), planner


async def _faust(settings: Settings, log: EventLog, n: int, batch: int) -> tuple[Run, Planner]:
    planner = _planner()
    intake = Intake(planner, clock=time.monotonic)
    app = intake.app(settings, batch=batch)
    last = await log.last_sequence(names.STREAM_EVENTS)
    begin = time.perf_counter()
    await app.start()
    intake.sync(app)
    started = time.perf_counter() - begin
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        await app.reached(names.SCHEDULER_PROCESSOR, last)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        app.stop()
        await app.wait()
    # A restart: the tables come back from the changelog, the log is not read again.
    restarted = Intake(_planner(), clock=time.monotonic)
    again = restarted.app(settings, batch=batch)
    begin = time.perf_counter()
    await again.start()
    restarted.sync(again)
    recovered = time.perf_counter() - begin
    again.stop()
    await again.wait()
    if rows_of(restarted.planner.view, {}) != rows_of(planner.view, {}):
        raise AssertionError("the recovered view differs from the folded one")
    # Next repeat starts from nothing again.
    with contextlib.suppress(NotFoundError):
        await log.js.delete_stream(names.changelog_stream(names.SCHEDULER_APP))
    return Run(n / wall, cpu / n * 1e6, started, recovered), planner


async def run(n: int = 20_000, *, batch: int = 500, repeats: int = 3) -> list[dict[str, Any]]:
    """Both paths over about `n` events: two rows (plain, then faust with its ratio)."""
    history = _history(n)
    with tempfile.TemporaryDirectory(prefix="bench-sched-intake-") as tmp:
        server = EmbeddedNats(Path(tmp))
        url = server.start()
        try:
            settings = Settings(nats_url=url)
            log = await EventLog.connect(url, settings, name="bench-scheduler-intake")
            try:
                requests = [
                    AppendRequest.of(event(p, aggregate_id=agg, source="bench"))
                    for p, agg in history
                ]
                for start in range(0, len(requests), 1000):
                    await log.append_batch(requests[start : start + 1000])
                plain_runs: list[Run] = []
                faust_runs: list[Run] = []
                for _ in range(repeats):
                    run_plain, folded_plain = await _plain(log, len(history), batch)
                    run_faust, folded_faust = await _faust(settings, log, len(history), batch)
                    plain_rows = rows_of(folded_plain.view, folded_plain.attempts)
                    if rows_of(folded_faust.view, folded_faust.attempts) != plain_rows:
                        raise AssertionError("the two paths folded different views")
                    plain_runs.append(run_plain)
                    faust_runs.append(run_faust)
            finally:
                await log.close()
        finally:
            server.stop()
    return streamapp.rows(
        {"events": len(history), "batch": batch, "repeats": repeats},
        plain=("scheduler fold, plain pull loop (no state kept)", plain_runs),
        faust=("scheduler fold, StreamApp + changelog tables", faust_runs),
        target_ratio=TARGET_RATIO,
        timings=("start_s", "recover_s"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for row in asyncio.run(run(args.events, batch=args.batch, repeats=args.repeats)):
        print(row)


if __name__ == "__main__":
    main()
