"""Hive benchmark: command throughput, folding speed and leader failover, each with its baseline.

    .venv/bin/python bench/hive.py [--commands N] [--events N] [--trials N] [--json PATH]

Every figure is measured in this run against a raw JetStream baseline on the same machine:

* commands/s end to end (publish to outcome on the log) with 1 and 3 Hive replicas, against raw
  pipelined JetStream publishes of the same number of messages;
* events/s folded into the Raft-agreed state, against a raw pull `fetch` + `ack` loop over the
  same events;
* leader failover: kill -9 of the leader until the next command is accepted (p50 and max).
"""

from __future__ import annotations

import asyncio
import base64
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nats.js.api import StreamConfig

from bench import _common
from schemas import command, commands, event, events, names
from schemas.specs import AgentSpec, ModuleRef
from services.hive.testing import HiveCluster
from swarm.devstack.embedded import EmbeddedNats
from swarm.kernel.eventlog import AppendRequest, EventLog

SPEC = AgentSpec(version="v1", module=ModuleRef(inline=base64.b64encode(b"\0asm\1\0\0\0").decode()))
CHUNK = 1000


def deploy(i: int, prefix: str = "a") -> AppendRequest:
    payload = commands.DeployAgent(name=f"{prefix}{i}", spec=SPEC, replicas=1)
    return AppendRequest.of(command(payload, source="bench", identity="user:bench"))


async def count_outcomes(log: EventLog, start_seq: int, want: int, timeout: float = 120.0) -> float:
    """Read outcomes from `start_seq` until `want` arrived; returns when the last one did."""
    reader = await log.reader(
        names.STREAM_EVENTS, start_seq=start_seq, subjects=[f"{names.EVENTS_PREFIX}.command.*.*"]
    )
    seen = 0
    deadline = time.perf_counter() + timeout
    try:
        while seen < want:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {seen}/{want} outcomes")
            seen += len(await reader.fetch(1000, timeout=0.2))
        return time.perf_counter()
    finally:
        await reader.close()


async def decided_per_second(log: EventLog, requests: list[AppendRequest]) -> tuple[float, int]:
    """Send `requests` (commands) pipelined in chunks and wait for all their outcomes: commands
    decided per second end to end, and the events stream's sequence the outcomes start at."""
    start_seq = await log.last_sequence(names.STREAM_EVENTS) + 1
    counter = asyncio.create_task(count_outcomes(log, start_seq, len(requests)))
    start = time.perf_counter()
    for lo in range(0, len(requests), CHUNK):
        await log.append_batch(requests[lo : lo + CHUNK])
    done = await counter
    return len(requests) / (done - start), start_seq


async def raw_publish(url: str, n: int, payload: bytes) -> float:
    log = await EventLog.connect(url, ensure=False)
    rate = await publish_raw(log, n, payload)
    await log.js.delete_stream("BENCH_RAW")
    await log.close()
    return rate


async def publish_raw(log: EventLog, n: int, payload: bytes) -> float:
    """`n` pipelined JetStream publishes of `payload` on a stream of their own (BENCH_RAW,
    created here): publishes/s, the raw baseline."""
    await log.js.add_stream(StreamConfig(name="BENCH_RAW", subjects=["bench.raw.>"]))
    start = time.perf_counter()
    for lo in range(0, n, CHUNK):
        futures = [
            await log.js.publish_async(f"bench.raw.{i}", payload)
            for i in range(lo, min(n, lo + CHUNK))
        ]
        await asyncio.gather(*futures)
    return n / (time.perf_counter() - start)


async def commands_per_second(root: Path, replicas: int, n: int) -> dict[str, float]:
    server = EmbeddedNats(root / f"nats-cmd-{replicas}")
    url = server.start()
    cluster = HiveCluster(url, root / f"cmd-{replicas}", size=replicas)
    (root / f"cmd-{replicas}").mkdir(parents=True, exist_ok=True)
    cluster.start()
    try:
        log = await EventLog.connect(url)
        await cluster.leader(log.nc, timeout=30)
        requests = [deploy(i) for i in range(n)]
        raw = await raw_publish(url, n, requests[0].body)
        rate, _ = await decided_per_second(log, requests)
        await log.close()
        return {"hive": rate, "raw": raw}
    finally:
        cluster.stop()
        server.stop()


async def folding(root: Path, n: int, replicas: int) -> dict[str, float]:
    """Fold `n` pre-written events with a fresh Hive; baseline: a raw pull loop over them."""
    server = EmbeddedNats(root / f"nats-fold-{replicas}")
    url = server.start()
    try:
        log = await EventLog.connect(url)
        batch: list[AppendRequest] = []
        written = 0
        i = 0
        while written < n:
            agent_id = f"agent{i:08d}"
            deployed = events.AgentDeployed(
                agent_id=agent_id, namespace="default", name=f"a{i}", spec=SPEC, replicas=1
            )
            requested = events.ReplicaRequested(
                agent_id=agent_id, replica_id=f"{agent_id}-0", version="v1", reason="deployed"
            )
            for payload in (deployed, requested):
                batch.append(
                    AppendRequest.of(event(payload, aggregate_id=agent_id, source="bench"))
                )
            written += 2
            i += 1
            if len(batch) >= CHUNK:
                await log.append_batch(batch)
                batch = []
        if batch:
            await log.append_batch(batch)
        end = await log.last_sequence(names.STREAM_EVENTS)

        consumer = await log.consumer(names.STREAM_EVENTS, "bench-raw", max_ack_pending=CHUNK)
        got = 0
        start = time.perf_counter()
        while got < end:
            msgs = await consumer._sub.fetch(CHUNK, timeout=5)  # raw nats-py fetch + ack
            for m in msgs:
                await m.ack()
            got += len(msgs)
        raw = end / (time.perf_counter() - start)
        await consumer.close()

        (root / f"fold-{replicas}").mkdir(parents=True, exist_ok=True)
        cluster = HiveCluster(url, root / f"fold-{replicas}", size=replicas)
        cluster.start()
        try:
            leader = await cluster.leader(log.nc, timeout=30)
            # Timed from the first folded event, so process start-up is not counted.
            first = None
            while True:
                st = await cluster.status(log.nc, leader)
                applied = st["applied_seq"] if st else 0
                if applied and first is None:
                    first = (time.perf_counter(), applied)
                if applied >= end:
                    break
                await asyncio.sleep(0.01)
            assert first is not None
            hive = (end - first[1]) / max(time.perf_counter() - first[0], 1e-9)
            await cluster.converged(log.nc, end, timeout=120)
        finally:
            cluster.stop()
        await log.close()
        return {"hive": hive, "raw": raw, "events": float(end)}
    finally:
        server.stop()


async def failover(root: Path, trials: int) -> list[float]:
    server = EmbeddedNats(root / "nats-failover")
    url = server.start()
    (root / "failover").mkdir(parents=True, exist_ok=True)
    cluster = HiveCluster(url, root / "failover", size=3)
    cluster.start()
    times: list[float] = []
    try:
        log = await EventLog.connect(url)
        for trial in range(trials):
            leader = await cluster.leader(log.nc, timeout=30)
            probe = AppendRequest.of(
                command(
                    commands.CreateNamespace(name=f"failover-{trial}"),
                    source="bench",
                    identity="user:bench",
                )
            )
            start_seq = await log.last_sequence(names.STREAM_EVENTS) + 1
            waiter = asyncio.create_task(count_outcomes(log, start_seq, 1, timeout=60))
            killed = time.perf_counter()
            cluster.kill(leader, signal.SIGKILL)
            await log.append_raw(probe)
            times.append(await waiter - killed)
            cluster.start(leader)
            await cluster.converged(
                log.nc, await log.last_sequence(names.STREAM_EVENTS), timeout=60
            )
        await log.close()
        return times
    finally:
        cluster.stop()
        server.stop()


async def main() -> None:
    parser = _common.arguments("hive", __doc__, raw=True)
    parser.add_argument("--commands", type=int, default=5000)
    parser.add_argument("--events", type=int, default=40000)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    load_at_start = _common.load_average()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="swarm-bench-hive-") as tmp:
        root = Path(tmp)
        with console.status("commands/s, 1 replica"):
            cmd1 = await commands_per_second(root, 1, args.commands)
        with console.status("commands/s, 3 replicas"):
            cmd3 = await commands_per_second(root, 3, args.commands)
        with console.status("folding, 1 replica"):
            fold1 = await folding(root, args.events, 1)
        with console.status("folding, 3 replicas"):
            fold3 = await folding(root, args.events, 3)
        with console.status(f"failover, {args.trials} trials"):
            fail = await failover(root, args.trials)

    table = Table(title="Hive benchmark (same run, same machine)")
    for col in ("measure", "Hive", "raw baseline", "ratio", "target"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    table.add_row(
        "commands/s, 1 replica",
        f"{cmd1['hive']:,.0f}",
        f"{cmd1['raw']:,.0f} publish/s",
        f"{cmd1['hive'] / cmd1['raw']:.2f}",
        "",
    )
    table.add_row(
        "commands/s, 3 replicas",
        f"{cmd3['hive']:,.0f}",
        f"{cmd3['raw']:,.0f} publish/s",
        f"{cmd3['hive'] / cmd3['raw']:.2f}",
        "",
    )
    table.add_row(
        "events/s folded, 1 replica",
        f"{fold1['hive']:,.0f}",
        f"{fold1['raw']:,.0f} consume/s",
        f"{fold1['hive'] / fold1['raw']:.2f}",
        ">= 0.5",
    )
    table.add_row(
        "events/s folded, 3 replicas",
        f"{fold3['hive']:,.0f}",
        f"{fold3['raw']:,.0f} consume/s",
        f"{fold3['hive'] / fold3['raw']:.2f}",
        ">= 0.5",
    )
    table.add_row("failover p50 (s)", f"{statistics.median(fail):.3f}", "", "", "< 1 s")
    table.add_row("failover max (s)", f"{max(fail):.3f}", "", "", "")
    console.print(table)

    result: dict[str, Any] = {
        **_common.report(
            "hive",
            {"commands": args.commands, "events": args.events, "trials": args.trials},
            load_at_start,
        ),
        "commands_per_s": {"replicas_1": cmd1, "replicas_3": cmd3},
        "fold_events_per_s": {"replicas_1": fold1, "replicas_3": fold3},
        "fold_ratio": {
            "replicas_1": fold1["hive"] / fold1["raw"],
            "replicas_3": fold3["hive"] / fold3["raw"],
        },
        "failover_s": {"trials": fail, "p50": statistics.median(fail), "max": max(fail)},
    }
    _common.write_report(args.json, result, console)


if __name__ == "__main__":
    asyncio.run(main())
