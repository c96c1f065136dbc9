"""User-surface benchmark: what the surfaces people read the log through cost, each against a raw
baseline measured in the same run on the same machine.

    .venv/bin/python bench/surfaces.py [--events N] [--repeats N] [--case NAME ...] [--json PATH]

Cases (each adds rows to one table and to bench/results/surfaces.json):

* ``replay``: a stream of N realistic Hive events (pods registered, agents deployed, replicas
  requested → scheduled → starting → running, status changes, one outcome per command) is read
  back (a) through `swarm timeline`'s read path (`timeline.history`: batched ordered reads, every
  entry decoded leniently as the listing shows it) and (b) through `--at`'s path
  (`timetravel.fold_until`: strict decode + `evolve` into a HiveState), each against a raw nats-py
  ordered consumer (push, flow control, nothing decoded) over the same stream. Target: the
  timeline's replay at least 0.5x raw.
* Further cases live in modules of their own, `bench/surfaces_<case>.py`, and are run when
  present: each exposes ``async def run(root: Path, args: argparse.Namespace) -> list[dict]``
  returning rows shaped like `Row.as_json()` (`case`, `measure`, `swarm_per_s`, `raw_per_s`,
  `raw`, `ratio`, `target`, `met`, `runs`; other keys are kept as they are). A case's own
  parameters are options of this script (add them to `main`'s parser) read from `args`.
  `bench/surfaces_webhooks.py` is the ``webhooks`` case: deliveries/s by the dispatcher to a local
  receiver against raw httpx POSTs to it (target: >= 500 deliveries/s, an absolute figure).

Every rate is the median of `--repeats` runs; runs of the surface and of its baseline alternate,
and the ratio is the median of each repeat's own ratio, so load from other processes on the
shared cores hits both sides of it alike. The wall-clock ratio is what the target is about; the
"cpu ratio" compares events per second of this process's CPU time, which that load hardly moves
(the nats-server is another process, so it measures the client side only).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nats.js.api import DeliverPolicy

from bench import _common
from schemas import CommandAccepted, Payload, command, commands, event, events, names
from schemas.specs import AgentSpec, Capacity, ModuleRef
from swarm.client.timeline import Filters, history
from swarm.client.timetravel import Point, fold_until
from swarm.devstack.embedded import EmbeddedNats
from swarm.kernel.eventlog import AppendRequest, EventLog

SPEC = AgentSpec(version="v1", module=ModuleRef(inline=base64.b64encode(b"\0asm\1\0\0\0").decode()))
CHUNK = 1000
PODS = 20
REPLAY_TARGET = 0.5


@dataclass
class Row:
    case: str
    measure: str
    raw: str
    swarm_runs: list[float]
    raw_runs: list[float]
    target: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The same runs per second of this process's CPU time, when the case measures it.
    swarm_cpu_runs: list[float] = field(default_factory=list)
    raw_cpu_runs: list[float] = field(default_factory=list)

    @property
    def cpu_ratio(self) -> float | None:
        if not self.swarm_cpu_runs or not self.raw_cpu_runs:
            return None
        return _common.paired_ratio(self.swarm_cpu_runs, self.raw_cpu_runs)

    @property
    def swarm_per_s(self) -> float:
        return statistics.median(self.swarm_runs)

    @property
    def raw_per_s(self) -> float:
        return statistics.median(self.raw_runs)

    @property
    def ratio(self) -> float:
        return _common.paired_ratio(self.swarm_runs, self.raw_runs)

    def as_json(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "measure": self.measure,
            "swarm_per_s": self.swarm_per_s,
            "raw": self.raw,
            "raw_per_s": self.raw_per_s,
            "ratio": self.ratio,
            "target": self.target,
            "met": None if self.target is None else self.ratio >= self.target,
            "runs": {"swarm": self.swarm_runs, "raw": self.raw_runs},
            "cpu_ratio": self.cpu_ratio,
            "cpu_runs": {"swarm": self.swarm_cpu_runs, "raw": self.raw_cpu_runs},
            **self.extra,
        }


# --- replay --------------------------------------------------------------------------------------


def realistic_events(n: int) -> list[AppendRequest]:
    """At least `n` events as the Hive writes them, consistent enough for `evolve` to fold."""
    requests: list[AppendRequest] = []

    def emit(payload: Payload, aggregate_id: str, cause: Any) -> None:
        env = event(payload, aggregate_id=aggregate_id, source="bench", cause=cause)
        requests.append(AppendRequest.of(env))

    for p in range(PODS):
        pod_id = f"pod{p:03d}"
        cmd = command(
            commands.RegisterPod(
                pod_id=pod_id, capacity=Capacity(memory_mb=10**7, fuel_per_s=10**12, slots=10**6)
            ),
            source="bench",
        )
        emit(
            events.PodRegistered(
                pod_id=pod_id,
                capacity=Capacity(memory_mb=10**7, fuel_per_s=10**12, slots=10**6),
                zone=f"z{p % 3}",
                energy_cost=1.0,
                lease_s=30.0,
            ),
            pod_id,
            cmd,
        )
        emit(CommandAccepted(command_id=cmd.id, command_type=cmd.type), cmd.id, cmd)
    i = 0
    while len(requests) < n:
        agent_id, replica_id, pod_id = f"ag{i:08d}", f"ag{i:08d}-0", f"pod{i % PODS:03d}"
        deploy = command(commands.DeployAgent(name=f"a{i}", spec=SPEC), source="bench")
        emit(
            events.AgentDeployed(
                agent_id=agent_id, namespace="default", name=f"a{i}", spec=SPEC, replicas=1
            ),
            agent_id,
            deploy,
        )
        emit(
            events.ReplicaRequested(
                agent_id=agent_id, replica_id=replica_id, version="v1", reason="deployed"
            ),
            agent_id,
            deploy,
        )
        emit(CommandAccepted(command_id=deploy.id, command_type=deploy.type), deploy.id, deploy)
        place = command(
            commands.ProposePlacement(
                agent_id=agent_id, replica_id=replica_id, pod_id=pod_id, policy="bench"
            ),
            source="bench",
        )
        emit(
            events.ReplicaScheduled(
                agent_id=agent_id,
                replica_id=replica_id,
                pod_id=pod_id,
                policy="bench",
                reason="most free capacity",
            ),
            agent_id,
            place,
        )
        emit(CommandAccepted(command_id=place.id, command_type=place.type), place.id, place)
        for status in ("starting", "running"):
            report = command(
                commands.ReportReplica(
                    agent_id=agent_id, replica_id=replica_id, pod_id=pod_id, status=status
                ),
                source="bench",
            )
            replica_event: Payload = (
                events.ReplicaStarting(agent_id=agent_id, replica_id=replica_id, pod_id=pod_id)
                if status == "starting"
                else events.ReplicaRunning(agent_id=agent_id, replica_id=replica_id, pod_id=pod_id)
            )
            emit(replica_event, agent_id, report)
            if status == "running":
                emit(
                    events.AgentStatusChanged(
                        agent_id=agent_id,
                        status="running",
                        previous="requested",
                        reason="all replicas running",
                    ),
                    agent_id,
                    report,
                )
            emit(CommandAccepted(command_id=report.id, command_type=report.type), report.id, report)
        i += 1
    return requests


@dataclass(frozen=True)
class Rate:
    """Events/s by the wall clock, and per second of this process's CPU time (which load from
    other processes on the shared cores hardly changes)."""

    wall: float
    cpu: float


class Clock:
    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def rate(self, n: int) -> Rate:
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        return Rate(n / wall, n / max(cpu, 1e-9))


async def timeline_replay(log: EventLog, end: int) -> Rate:
    """`swarm timeline`'s read path over the whole stream."""
    seen = 0
    clock = Clock()
    async for _ in history(log, names.STREAM_EVENTS, Filters(), end=end):
        seen += 1
    rate = clock.rate(end)
    assert seen == end, (seen, end)
    return rate


async def timeline_fold(log: EventLog, end: int) -> Rate:
    """`swarm timeline --at END`'s path: replay, strict decode, evolve, the state's view."""
    clock = Clock()
    (snapshot,) = await fold_until(log, [Point(seq=end)])
    rate = clock.rate(end)
    assert snapshot.applied_seq == end
    assert len(snapshot.state["pods"]) == PODS
    return rate


async def raw_ordered(log: EventLog, end: int) -> Rate:
    """A raw nats-py ordered consumer (push, flow control) over the same stream."""
    done = asyncio.Event()
    seen = 0

    async def on_msg(_msg: Any) -> None:
        nonlocal seen
        seen += 1
        if seen >= end:
            done.set()

    clock = Clock()
    sub = await log.js.subscribe(
        names.EVENTS_ALL,
        stream=names.STREAM_EVENTS,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        cb=on_msg,
        pending_msgs_limit=CHUNK * 64,
    )
    try:
        await asyncio.wait_for(done.wait(), 300)
        rate = clock.rate(end)
    finally:
        await sub.unsubscribe()
    return rate


async def replay_case(root: Path, args: argparse.Namespace) -> list[Row]:
    server = EmbeddedNats(root / "nats-replay")
    url = server.start()
    try:
        log = await EventLog.connect(url, name="bench-surfaces")
        requests = realistic_events(args.events)
        for lo in range(0, len(requests), CHUNK):
            await log.append_batch(requests[lo : lo + CHUNK])
        end = await log.last_sequence(names.STREAM_EVENTS)
        size = sum(len(r.body) for r in requests) / len(requests)
        replay: list[Rate] = []
        fold: list[Rate] = []
        raw: list[Rate] = []
        for _ in range(args.repeats):
            raw.append(await raw_ordered(log, end))
            replay.append(await timeline_replay(log, end))
            fold.append(await timeline_fold(log, end))
        await log.close()
    finally:
        server.stop()
    extra = {"events": end, "mean_event_bytes": round(size)}
    raw_wall, raw_cpu = [r.wall for r in raw], [r.cpu for r in raw]
    return [
        Row(
            "replay",
            measure,
            "nats-py ordered consumer",
            [r.wall for r in rates],
            raw_wall,
            target,
            extra,
            [r.cpu for r in rates],
            raw_cpu,
        )
        for measure, rates, target in (
            ("timeline replay, events/s", replay, REPLAY_TARGET),
            ("timeline --at (replay + evolve), events/s", fold, None),
        )
    ]


# --- driver --------------------------------------------------------------------------------------

Case = Callable[[Path, argparse.Namespace], Awaitable[list[Row]]]
CASES: dict[str, Case] = {"replay": replay_case}


def external_case(path: Path) -> Case:
    """The case in `bench/surfaces_<name>.py`: its `run`, imported only when the case runs (so
    one case's imports or extras never keep another from running); its rows come as dicts."""

    async def run(root: Path, args: argparse.Namespace) -> list[Row]:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        rows: list[dict[str, Any]] = await module.run(root, args)
        return [
            Row(
                r["case"],
                r["measure"],
                r["raw"],
                list(r.get("runs", {}).get("swarm") or [r["swarm_per_s"]]),
                list(r.get("runs", {}).get("raw") or [r["raw_per_s"]]),
                r.get("target"),
                {k: v for k, v in r.items() if k not in _ROW_KEYS},
                list(r.get("cpu_runs", {}).get("swarm") or []),
                list(r.get("cpu_runs", {}).get("raw") or []),
            )
            for r in rows
        ]

    return run


_ROW_KEYS = frozenset(
    {
        "case",
        "measure",
        "swarm_per_s",
        "raw",
        "raw_per_s",
        "ratio",
        "target",
        "met",
        "runs",
        "cpu_ratio",
        "cpu_runs",
    }
)


def available_cases() -> dict[str, Case]:
    cases = dict(CASES)
    for path in sorted(Path(__file__).parent.glob("surfaces_*.py")):
        cases.setdefault(path.stem.removeprefix("surfaces_"), external_case(path))
    return cases


def print_table(console: Console, rows: list[Row]) -> None:
    table = Table(title="User surfaces (same run, same machine; medians)")
    columns = (
        "case",
        "measure",
        "swarm /s",
        "raw baseline",
        "raw /s",
        "ratio",
        "cpu ratio",
        "target",
    )
    for col in columns:
        table.add_column(
            col, justify="left" if col in ("case", "measure", "raw baseline") else "right"
        )
    for row in rows:
        met = "" if row.target is None else (" ok" if row.ratio >= row.target else " MISSED")
        table.add_row(
            row.case,
            row.measure,
            f"{row.swarm_per_s:,.0f}",
            row.raw,
            f"{row.raw_per_s:,.0f}",
            f"{row.ratio:.2f}",
            "" if row.cpu_ratio is None else f"{row.cpu_ratio:.2f}",
            "" if row.target is None else f">= {row.target}{met}",
        )
    console.print(table)


async def main(argv: list[str] | None = None) -> int:
    cases = available_cases()
    parser = _common.arguments("surfaces", __doc__, raw=True)
    parser.add_argument("--events", type=int, default=50_000, help="events in the replay stream")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--webhook-events", type=int, default=2000, help="events delivered per webhooks run"
    )
    parser.add_argument(
        "--webhook-window", type=int, default=32, help="webhook deliveries in flight"
    )
    parser.add_argument(
        "--case", action="append", choices=sorted(cases), help="run only these (repeatable)"
    )
    args = parser.parse_args(argv)
    console = Console()
    load = _common.load_average()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="swarm-bench-surfaces-") as tmp:
        for name in args.case or sorted(cases):
            with console.status(f"{name} …"):
                rows.extend(await cases[name](Path(tmp) / name, args))
    print_table(console, rows)
    params = {"events": args.events, "repeats": args.repeats, "cases": args.case or sorted(cases)}
    report = {
        **_common.report("surfaces", params, load, nats_py=version("nats-py")),
        "results": [row.as_json() for row in rows],
    }
    _common.write_report(args.json, report, console)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
