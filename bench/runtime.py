"""Runtime benchmark: deploy latency, agent start rate, messaging, idle memory, vector search.

    .venv/bin/python bench/runtime.py [--deploys N] [--burst N] [--agents N] [--idle N]
                                      [--components N] [--messages N] [--vectors N] [--json PATH]

One run, one machine, every baseline measured in the same run:

* deploy latency: `agent.deploy` command appended -> the agent's `replica_running` event seen on
  the log (a core subscription on its subject), sequentially over `--deploys` deploys of the same
  inline echo module (compiled once by a warm-up deploy, so the module cache is hot), with a real
  Hive (1 replica, subprocess), the scheduler and one pod (both in this process); then a burst of
  `--burst` deploys appended at once, timed until all are running (pod-level start rate);
* agents started per second: `AgentSandbox` instances of the echo module from a warm
  `ModuleCache` in one thread (the runtime's own rate, without the control plane);
* messages: `--messages` requests with 64 in flight to the echo agent's mesh subject (through the
  pod) against the same client doing raw `nc.request` to a core NATS responder in this process
  that echoes; msgs/s and p50 latency (under load and one at a time) for both, and the ratio;
* memory per idle agent: RSS growth (psutil) over `--idle` idle echo sandboxes held at once;
* memory per idle Python component: examples/counter-py/app.py built once with componentize-py
  and compiled once into the run's temp dir, then, in a fresh subprocess that loads it from that
  disk cache, RSS growth over `--components` idle `ComponentSandbox`es held at once (after one
  warm-up instance, also held); skipped if componentize-py is not installed or `--components 0`;
* vector search p50: `VectorMemory.search` (runtime/memory.py) over `--vectors` random 384-d
  vectors in one namespace on an embedded Postgres migrated to head, against raw psycopg
  `ORDER BY embedding <=> %s LIMIT 10` on the same table and HNSW index (same ef_search).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import psutil
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common
from bench.controlplane import RunningWatch, control_plane, pods_registered
from bench.pods import pod_process
from runtime.config import PodSettings
from runtime.engine import SandboxEngine
from runtime.host import MemoryHost
from runtime.limits import SandboxLimits
from runtime.modules import ModuleCache
from runtime.pod import Pod
from runtime.sandbox import AgentSandbox
from schemas import command, commands, names
from schemas.specs import AgentSpec, ModuleRef, Resources
from swarm.kernel.eventlog import AppendRequest, EventLog
from swarm.kernel.settings import Settings

# The echo agent of runtime/ABI.md, as the tests build it: replies with the message it got.
from tests.helpers.agents import ECHO

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "default"
AGENT_MEMORY_MB = 16
POD_ID = "bench-pod"
IN_FLIGHT = 64
RAW_SUBJECT = "bench.raw.echo"
TARGET_DEPLOY_P99_MS = 100.0
TARGET_STARTS_PER_S = 1000.0
TARGET_IDLE_AGENTS = 10_000
COUNTER_APP = ROOT / "examples" / "counter-py" / "app.py"
NA_COMPONENTS = "n/a (componentize-py not installed)"
COMPONENT_CHILD = "--component-idle-child"  # argv[1] of the subprocess that holds components
T = TypeVar("T")


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


def hold(make: Callable[[], T], n: int, held: list[T]) -> tuple[int, int, str | None]:
    """Make up to `n` instances into `held`, which keeps them alive; this process's RSS before
    and after (each after a collection), and why making them stopped early, if it did."""
    gc.collect()
    before = rss()
    failure: str | None = None
    try:
        for _ in range(n):
            held.append(make())
    except Exception as exc:  # how many fit is the measurement
        failure = f"{type(exc).__name__}: {exc}"
    gc.collect()
    return before, rss(), failure


# --- sandbox level -------------------------------------------------------------------------------


def sandbox_starts(engine: SandboxEngine, cache: ModuleCache, n: int) -> dict[str, float]:
    """AgentSandbox instances created per second from a warm cache, each kept (as a pod does)."""
    module = cache.load(ECHO)
    limits = SandboxLimits(memory_bytes=AGENT_MEMORY_MB * 1024 * 1024)
    AgentSandbox(engine, module, limits, MemoryHost()).close()  # warm-up
    held: list[AgentSandbox] = []
    started = time.perf_counter()
    for _ in range(n):
        held.append(AgentSandbox(engine, module, limits, MemoryHost()))
    elapsed = time.perf_counter() - started
    # Every instance works: the last one answers.
    assert held[-1].handle(b"ping").replies == (b"ping",)
    for sandbox in held:
        sandbox.close()
    return {"agents": float(n), "elapsed_s": elapsed, "per_s": n / elapsed}


def idle_memory(engine: SandboxEngine, cache: ModuleCache, n: int) -> dict[str, Any]:
    """RSS growth per idle echo sandbox, over `n` of them held at once."""
    module = cache.load(ECHO)
    limits = SandboxLimits(memory_bytes=AGENT_MEMORY_MB * 1024 * 1024)
    held: list[AgentSandbox] = []
    before, after, failure = hold(
        lambda: AgentSandbox(engine, module, limits, MemoryHost()), n, held
    )
    # Touch one of them, so they are live instances rather than dead weight.
    if held:
        assert held[len(held) // 2].handle(b"x").replies == (b"x",)
    created = len(held)
    for sandbox in held:
        sandbox.close()
    per = (after - before) / max(created, 1)
    pod_bytes = PodSettings.model_fields["memory_mb"].default * 1024 * 1024
    return {
        "agents": created,
        "requested": n,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_agent": per,
        "failure": failure,
        "fits_in_one_pod": created >= TARGET_IDLE_AGENTS and failure is None,
        # The pod's default memory capacity, and how many such agents that many bytes would hold.
        "pod_memory_bytes": pod_bytes,
        "agents_per_pod_memory": int(pod_bytes // per) if per > 0 else None,
    }


def component_idle_child(wasm_path: Path, cache_dir: Path, n: int) -> dict[str, Any]:
    """In a fresh process: RSS growth per idle counter component, over `n` held at once."""
    from runtime.components import ComponentCache, ComponentSandbox

    with SandboxEngine() as engine:
        cache = ComponentCache(engine, cache_dir)
        compiled = cache.load(wasm_path.read_bytes())  # from the disk cache
        limits = SandboxLimits()
        # Held, not counted: the first instance pays one-off costs (lazy init, page tables).
        held = [ComponentSandbox(cache, compiled, limits, MemoryHost())]
        before, after, failure = hold(
            lambda: ComponentSandbox(cache, compiled, limits, MemoryHost()), n, held
        )
        created = len(held) - 1
        # Touch one of them, so they are live instances rather than dead weight.
        assert held[len(held) // 2].handle(b"{}").replies == (b"1",)
        stats = cache.stats
        for sandbox in held:
            sandbox.close()
    return {
        "status": "measured",
        "components": created,
        "requested": n,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_component": (after - before) / max(created, 1),
        "failure": failure,
        "memory_limit_bytes": limits.memory_bytes,
        "cache_compiles_in_child": stats.compiles,
    }


def component_idle_memory(root: Path, n: int) -> dict[str, Any]:
    """Build and compile the counter component once under `root`; measure it in a subprocess."""
    if n == 0:
        return {"status": "skipped", "reason": "--components 0", "requested": 0}
    if importlib.util.find_spec("componentize_py") is None:
        return {"status": "n/a", "reason": NA_COMPONENTS, "requested": n}
    from runtime.build import build_agent
    from runtime.components import ComponentCache

    wasm_path = root / "components" / "counter.wasm"
    cache_dir = root / "components" / "cache"
    built = build_agent(COUNTER_APP, wasm_path)
    with SandboxEngine() as engine:
        started = time.perf_counter()
        ComponentCache(engine, cache_dir, baseline=False).load(wasm_path.read_bytes())
        compile_s = time.perf_counter() - started
    proc = subprocess.run(
        [sys.executable, __file__, COMPONENT_CHILD, str(wasm_path), str(cache_dir), str(n)],
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"component idle-memory subprocess failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(
        app=str(COUNTER_APP.relative_to(ROOT)),
        component_bytes=built.size,
        build_s=built.duration_s,
        compile_s=compile_s,
    )
    return result


# --- control plane and pod -----------------------------------------------------------------------


def spec() -> AgentSpec:
    return AgentSpec(
        version="v1",
        module=ModuleRef(inline=base64.b64encode(ECHO).decode()),
        resources=Resources(memory_mb=AGENT_MEMORY_MB),
    )


def deploy_request(name: str) -> AppendRequest:
    payload = commands.DeployAgent(name=name, spec=spec(), replicas=1)
    return AppendRequest.of(command(payload, source="bench", identity="user:bench"))


async def deploy_latency(log: EventLog, watch: RunningWatch, n: int, burst: int) -> dict[str, Any]:
    await log.append_raw(deploy_request("echo"))  # compiles the module, caches it on disk
    await asyncio.wait_for(watch.wait("echo"), 30)
    latencies: list[float] = []
    for i in range(n):
        name = f"d{i}"
        waiter = watch.wait(name)
        started = time.perf_counter()
        await log.append_raw(deploy_request(name))
        latencies.append(await asyncio.wait_for(waiter, 30) - started)
    result: dict[str, Any] = {
        "deploys": n,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": _common.percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
    }
    if burst:
        requests = [deploy_request(f"b{i}") for i in range(burst)]
        waiters = [watch.wait(f"b{i}") for i in range(burst)]
        started = time.perf_counter()
        for lo in range(0, burst, 1000):
            await log.append_batch(requests[lo : lo + 1000])
        done = max(await asyncio.wait_for(asyncio.gather(*waiters), 120))
        result["burst"] = {"deploys": burst, "elapsed_s": done - started}
        result["burst"]["per_s"] = burst / (done - started)
    return result


async def pipelined(
    request: Callable[[bytes], Awaitable[bytes]], n: int, in_flight: int
) -> dict[str, float]:
    """`n` requests, `in_flight` at a time: msgs/s and latency percentiles under that load."""
    latencies: list[float] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            body = b"%d" % i
            sent = time.perf_counter()
            reply = await request(body)
            latencies.append(time.perf_counter() - sent)
            if reply != body:
                raise RuntimeError(f"echo answered {reply[:100]!r} to {body!r}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    return {
        "msgs_per_s": n / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": _common.percentile(latencies, 99) * 1000,
    }


async def answered(client: Client, subject: str, timeout: float = 10.0) -> None:
    """Wait until `subject` has a responder as seen from `client`'s connection."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            await client.request(subject, b"probe", timeout=2)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.perf_counter() > deadline:
                raise
            await asyncio.sleep(0.05)


async def messages(url: str, n: int) -> dict[str, Any]:
    client = await nats.connect(url, name="bench-client")
    responder = await nats.connect(url, name="bench-raw-responder")
    try:

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        await responder.subscribe(RAW_SUBJECT, cb=echo)
        await responder.flush()
        await answered(client, RAW_SUBJECT)
        agent_subject = names.mesh_agent_subject(NAMESPACE, "echo")

        async def via_agent(body: bytes) -> bytes:
            reply = await client.request(agent_subject, body, timeout=10)
            if reply.headers and reply.headers.get(names.HEADER_AGENT_ERROR):
                raise RuntimeError(f"agent error: {reply.data[:200]!r}")
            return bytes(reply.data)

        async def via_raw(body: bytes) -> bytes:
            return bytes((await client.request(RAW_SUBJECT, body, timeout=10)).data)

        result: dict[str, Any] = {"messages": n, "in_flight": IN_FLIGHT}
        sequential = max(1, min(n, 1000))
        for side, request in (("raw", via_raw), ("swarm", via_agent)):
            await pipelined(request, min(n, 500), IN_FLIGHT)  # warm-up
            loaded = await pipelined(request, n, IN_FLIGHT)
            one = await pipelined(request, sequential, 1)
            result[side] = {
                **loaded,
                "p50_ms_one_at_a_time": one["p50_ms"],
                "sequential_requests": sequential,
            }
        result["ratio_msgs_per_s"] = result["swarm"]["msgs_per_s"] / result["raw"]["msgs_per_s"]
        result["ratio_p50"] = result["swarm"]["p50_ms"] / result["raw"]["p50_ms"]
        result["ratio_p50_one_at_a_time"] = (
            result["swarm"]["p50_ms_one_at_a_time"] / result["raw"]["p50_ms_one_at_a_time"]
        )
        return result
    finally:
        await client.close()
        await responder.close()


def pod_settings(root: Path, slots: int) -> PodSettings:
    return PodSettings(
        id=POD_ID,
        cache_dir=root / "pod" / "modules",
        slots=slots,
        memory_mb=slots * AGENT_MEMORY_MB,
    )


@contextlib.asynccontextmanager
async def pod_as_process(url: str, config: PodSettings, root: Path) -> AsyncIterator[None]:
    """`python -m runtime`, as `swarm up` runs a pod; its log goes to `root`/pod.log."""
    settings = {
        "SWARM_POD_ID": config.id,
        "SWARM_POD_CACHE_DIR": str(config.cache_dir),
        "SWARM_POD_SLOTS": str(config.slots),
        "SWARM_POD_MEMORY_MB": str(config.memory_mb),
    }
    async with pod_process(url, settings, root / "pod.log", stop_s=15.0):
        yield


@contextlib.asynccontextmanager
async def pod_in_process(url: str, config: PodSettings) -> AsyncIterator[None]:
    pod = Pod(Settings(nats_url=url), config)
    task = asyncio.create_task(pod.run())
    try:
        await asyncio.wait_for(pod.live.wait(), 30)
        yield
    finally:
        pod.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


async def deploys_and_messages(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    config = pod_settings(root, args.deploys + args.burst + 10)
    async with control_plane(root) as plane:
        pod = (
            pod_in_process(plane.url, config)
            if args.pod_in_process
            else pod_as_process(plane.url, config, root)
        )
        async with pod:
            await pods_registered(plane.log, {POD_ID})
            deploys = await deploy_latency(plane.log, plane.watch, args.deploys, args.burst)
            msgs = await messages(plane.url, args.messages)
    return {"deploy": deploys, "messages": msgs}


# --- vector search -------------------------------------------------------------------------------


VECTOR_NAMESPACE = "bench-agent"
VECTOR_QUERIES = 200
VECTOR_K = 10
_RAW_SEARCH = "SELECT key FROM agent_memory ORDER BY embedding <=> %s LIMIT 10"


def vector_search(root: Path, n: int) -> dict[str, Any]:
    """Search p50 of `VectorMemory` over `n` random 384-d vectors in one namespace, against raw
    psycopg `ORDER BY embedding <=> %s LIMIT 10` on the same table and index."""
    import numpy as np
    import psycopg
    from pgvector.psycopg import register_vector

    from runtime.memory import DIMENSIONS, VectorMemory
    from swarm.devstack.embedded import EmbeddedPostgres
    from swarm.devstack.stack import upgrade_database

    rng = np.random.default_rng(42)
    server = EmbeddedPostgres(root / "postgres")
    url = server.start()
    try:
        upgrade_database(url)
        with psycopg.connect(url, autocommit=True) as conn:
            register_vector(conn)
            # Bulk load, then build the migration's HNSW index once (what a restore would do):
            # inserting 100k rows into a live HNSW index takes minutes.
            index = conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'agent_memory_embedding_hnsw'"
            ).fetchone()
            assert index is not None, "migration 0002 did not create the HNSW index"
            conn.execute("DROP INDEX agent_memory_embedding_hnsw")
            started = time.perf_counter()
            with conn.cursor() as cur:
                copy_sql = (
                    "COPY agent_memory (agent_namespace, key, embedding) "
                    "FROM STDIN WITH (FORMAT BINARY)"
                )
                with cur.copy(copy_sql) as copy:
                    copy.set_types(["text", "text", "vector"])
                    for lo in range(0, n, 10_000):
                        block = rng.random((min(10_000, n - lo), DIMENSIONS), dtype=np.float32)
                        for i, row in enumerate(block):
                            copy.write_row((VECTOR_NAMESPACE, f"v{lo + i}", row))
            load_s = time.perf_counter() - started
            started = time.perf_counter()
            conn.execute("SET maintenance_work_mem = '1GB'")
            conn.execute(f"SET max_parallel_maintenance_workers = {min(7, os.cpu_count() or 1)}")
            conn.execute(index[0])
            index_s = time.perf_counter() - started
            conn.execute("ANALYZE agent_memory")

        queries = rng.random((VECTOR_QUERIES, DIMENSIONS), dtype=np.float32)
        memory = VectorMemory(url, pool_size=1)
        try:
            memory.search(VECTOR_NAMESPACE, queries[0].tolist(), VECTOR_K)  # connect, warm up
            swarm: list[float] = []
            for q in queries:
                vector = q.tolist()
                t = time.perf_counter()
                hits = memory.search(VECTOR_NAMESPACE, vector, VECTOR_K)
                swarm.append(time.perf_counter() - t)
                assert len(hits) == VECTOR_K, len(hits)
        finally:
            memory.close()
        raw: list[float] = []
        with psycopg.connect(url, autocommit=True) as conn:
            register_vector(conn)
            conn.execute("SET hnsw.ef_search = 100")  # what VectorMemory sets
            conn.execute(_RAW_SEARCH, (queries[0],)).fetchall()
            for q in queries:
                t = time.perf_counter()
                rows = conn.execute(_RAW_SEARCH, (q,)).fetchall()
                raw.append(time.perf_counter() - t)
                assert len(rows) == VECTOR_K
        return {
            "status": "measured",
            "vectors": n,
            "dimensions": DIMENSIONS,
            "queries": VECTOR_QUERIES,
            "k": VECTOR_K,
            "load_s": load_s,
            "index_build_s": index_s,
            "p50_ms": statistics.median(swarm) * 1000,
            "p99_ms": _common.percentile(swarm, 99) * 1000,
            "raw_p50_ms": statistics.median(raw) * 1000,
            "raw_p99_ms": _common.percentile(raw, 99) * 1000,
            "ratio_p50": statistics.median(swarm) / statistics.median(raw),
        }
    finally:
        server.stop()


# --- report --------------------------------------------------------------------------------------


def render(report: dict[str, Any], console: Console) -> None:
    d, s, m, mem = report["deploy"], report["starts"], report["messages"], report["idle_memory"]
    table = Table(title="Runtime benchmark (same run, same machine)")
    for col in ("measure", "Swarm", "raw baseline", "ratio", "target", "met"):
        table.add_column(col, justify="left" if col == "measure" else "right")

    def met(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[bold red]no[/bold red]"

    table.add_row(
        f"deploy → running p50 (ms, {d['deploys']} deploys)", f"{d['p50_ms']:.1f}", "", "", "", ""
    )
    table.add_row(
        "deploy → running p99 (ms)",
        f"{d['p99_ms']:.1f}",
        "",
        "",
        f"< {TARGET_DEPLOY_P99_MS:.0f}",
        met(d["p99_ms"] < TARGET_DEPLOY_P99_MS),
    )
    if "burst" in d:
        table.add_row(
            f"burst deploy: agents running/s ({d['burst']['deploys']} at once)",
            f"{d['burst']['per_s']:,.0f}",
            "",
            "",
            "",
            "",
        )
    table.add_row(
        f"sandbox agents started/s ({s['agents']:,.0f})",
        f"{s['per_s']:,.0f}",
        "",
        "",
        f">= {TARGET_STARTS_PER_S:,.0f}",
        met(s["per_s"] >= TARGET_STARTS_PER_S),
    )
    table.add_row(
        f"msgs/s, {m['in_flight']} in flight ({m['messages']:,})",
        f"{m['swarm']['msgs_per_s']:,.0f}",
        f"{m['raw']['msgs_per_s']:,.0f} raw req/rep",
        f"{m['ratio_msgs_per_s']:.2f}",
        "",
        "",
    )
    table.add_row(
        f"p50 latency (ms), {m['in_flight']} in flight",
        f"{m['swarm']['p50_ms']:.3f}",
        f"{m['raw']['p50_ms']:.3f}",
        f"{m['ratio_p50']:.2f}",
        "",
        "",
    )
    table.add_row(
        "p50 latency (ms), one at a time",
        f"{m['swarm']['p50_ms_one_at_a_time']:.3f}",
        f"{m['raw']['p50_ms_one_at_a_time']:.3f}",
        f"{m['ratio_p50_one_at_a_time']:.2f}",
        "",
        "",
    )
    table.add_row(
        f"memory per idle core agent (KiB, {mem['agents']:,} held)",
        f"{mem['bytes_per_agent'] / 1024:,.1f}",
        "",
        "",
        "",
        "",
    )
    table.add_row(
        "idle core agents in one pod",
        f"{mem['agents']:,}",
        "",
        "",
        f">= {TARGET_IDLE_AGENTS:,}",
        met(mem["fits_in_one_pod"]),
    )
    comp = report["idle_memory_component"]
    if comp["status"] == "measured":
        table.add_row(
            f"memory per idle Python component (KiB, {comp['components']:,} held)",
            f"{comp['bytes_per_component'] / 1024:,.1f}",
            "",
            "",
            "",
            "",
        )
    else:
        table.add_row(
            "memory per idle Python component",
            comp.get("reason", comp["status"]),
            "",
            "",
            "",
            "",
        )
    v = report["vector_search"]
    table.add_row(
        f"vector search p50 (ms, {v['vectors']:,} vectors)",
        f"{v['p50_ms']:.2f}",
        f"{v['raw_p50_ms']:.2f} raw psycopg",
        f"{v['ratio_p50']:.2f}",
        "",
        "",
    )
    table.caption = (
        "deploy: command appended → replica_running seen on the log; messages: a client to the "
        "echo agent's mesh subject through the pod vs the same client to a core NATS echo"
    )
    console.print(table)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _common.arguments("runtime", __doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--deploys", type=int, default=100, help="sequential deploys timed")
    parser.add_argument("--burst", type=int, default=500, help="deploys appended at once (0: off)")
    parser.add_argument("--agents", type=int, default=10_000, help="sandboxes started")
    parser.add_argument("--idle", type=int, default=10_000, help="idle sandboxes held for RSS")
    parser.add_argument(
        "--components",
        type=int,
        default=50,
        help="idle Python components held for RSS (0: off)",
    )
    parser.add_argument("--messages", type=int, default=10_000, help="requests per side")
    parser.add_argument("--vectors", type=int, default=100_000, help="vectors for search p50")
    parser.add_argument(
        "--pod-in-process",
        action="store_true",
        help="run the pod in this process (default: `python -m runtime` in a subprocess)",
    )
    args = parser.parse_args(argv)
    for name in ("deploys", "agents", "idle", "messages", "vectors"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive")
    if args.burst < 0:
        parser.error("--burst must be >= 0")
    if args.components < 0:
        parser.error("--components must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The pod and scheduler log every replica at info; keep the table readable.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    console = _common.console()
    started, load = time.perf_counter(), _common.load_average()
    with SandboxEngine() as engine:
        cache = ModuleCache(engine)
        # Idle memory first, while freed sandboxes cannot hide the growth.
        with console.status(f"holding {args.idle:,} idle sandboxes"):
            memory = idle_memory(engine, cache, args.idle)
        gc.collect()
        with console.status(f"starting {args.agents:,} sandboxes"):
            starts = sandbox_starts(engine, cache, args.agents)
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="swarm-bench-runtime-") as tmp:
        with console.status(f"holding {args.components:,} idle Python components"):
            component_memory = component_idle_memory(Path(tmp), args.components)
        with console.status("deploys and messages (Hive, scheduler, pod)"):
            cluster = asyncio.run(deploys_and_messages(Path(tmp), args))
        with console.status(f"vector search over {args.vectors:,} vectors"):
            vectors = vector_search(Path(tmp), args.vectors)
    params = {
        "deploys": args.deploys,
        "burst": args.burst,
        "agents": args.agents,
        "idle": args.idle,
        "components": args.components,
        "messages": args.messages,
        "vectors": args.vectors,
        "in_flight": IN_FLIGHT,
        "agent_memory_mb": AGENT_MEMORY_MB,
        "module_bytes": len(ECHO),
        "pod": "in-process" if args.pod_in_process else "subprocess",
    }
    report: dict[str, Any] = {
        **_common.report(
            "runtime", params, load, wasmtime=version("wasmtime"), nats_py=version("nats-py")
        ),
        "targets": {
            "deploy_p99_ms": TARGET_DEPLOY_P99_MS,
            "starts_per_s": TARGET_STARTS_PER_S,
            "idle_agents_per_pod": TARGET_IDLE_AGENTS,
        },
        "deploy": cluster["deploy"],
        "starts": starts,
        "messages": cluster["messages"],
        "idle_memory": memory,
        "idle_memory_component": component_memory,
        "vector_search": vectors,
    }
    report["met"] = {
        "deploy_p99": report["deploy"]["p99_ms"] < TARGET_DEPLOY_P99_MS,
        "starts_per_s": starts["per_s"] >= TARGET_STARTS_PER_S,
        "idle_agents_per_pod": memory["fits_in_one_pod"],
    }
    report["elapsed_s"] = round(time.perf_counter() - started, 2)
    render(report, console)
    _common.write_report(args.json, report, console)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == [COMPONENT_CHILD]:
        wasm_arg, cache_arg, n_arg = sys.argv[2:5]
        print(json.dumps(component_idle_child(Path(wasm_arg), Path(cache_arg), int(n_arg))))
        sys.exit(0)
    sys.exit(main())
