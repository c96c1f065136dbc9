"""HTTP API benchmark: what the gateway adds to a command and a read, against the client layer.

    .venv/bin/python bench/gateway.py [--commands N] [--reads N] [--concurrency C] [--json PATH]

One nats-server, one Hive replica (a real process) and the gateway (`python -m swarm.gateway`, a
real uvicorn process) on this machine. Every figure is measured in this run against the baseline
of doing the same through `swarm.client` directly (what the CLI does), on the same Hive:

* command round trip (create a namespace, wait for its outcome): latency p50/p95 one at a time,
  and commands/s with C in flight;
* a read (list namespaces, read-your-writes): latency p50/p95;
* SSE: from sending a command to its event arriving on an open stream, against reading its
  outcome from the log directly (p50/p95).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common
from schemas import commands as payloads
from schemas import names
from services.hive.testing import HiveCluster
from swarm.client import commands
from swarm.client.queries import HiveQueries
from swarm.devstack.embedded import EmbeddedNats, die_with_parent, free_port
from swarm.kernel.eventlog import EventLog

TOKEN = "bench-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000,
    }


async def timed(n: int, step: Callable[[int], Awaitable[None]]) -> list[float]:
    samples = []
    for i in range(n):
        began = time.perf_counter()
        await step(i)
        samples.append(time.perf_counter() - began)
    return samples


async def alternating(
    n: int, first: Callable[[int], Awaitable[None]], second: Callable[[int], Awaitable[None]]
) -> tuple[list[float], list[float]]:
    a: list[float] = []
    b: list[float] = []
    for i in range(n):
        a += await timed(1, lambda _, i=i: first(i))  # type: ignore[misc]
        b += await timed(1, lambda _, i=i: second(i))  # type: ignore[misc]
    return a, b


async def rate(n: int, concurrency: int, step: Callable[[int], Awaitable[None]]) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await step(i)

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - began)


def start_gateway(nats_url: str, root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "SWARM_NATS_URL": nats_url,
        "SWARM_API_TOKEN": TOKEN,
        "SWARM_API_PORT": str(port),
        "SWARM_LOG_LEVEL": "warning",
    }
    with (root / "gateway.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "swarm.gateway"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
    return proc, f"http://127.0.0.1:{port}"


async def ready(api: httpx.AsyncClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (await api.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("the gateway did not become ready")


async def run(root: Path, n: int, reads: int, concurrency: int) -> dict[str, Any]:
    server = EmbeddedNats(root / "nats")
    url = server.start()
    (root / "hive").mkdir(parents=True, exist_ok=True)
    cluster = HiveCluster(url, root / "hive", size=1)
    cluster.start()
    proc, api_url = start_gateway(url, root)
    try:
        log = await EventLog.connect(url)
        await cluster.leader(log.nc, timeout=30)
        queries = HiveQueries(log.nc)
        async with httpx.AsyncClient(base_url=api_url, headers=AUTH, timeout=30) as api:
            await ready(api)

            async def client_create(prefix: str, i: int) -> None:
                event = commands.prepare(
                    payloads.CreateNamespace, {"name": f"{prefix}{i}"}, identity="user:bench"
                )
                # With the events it caused, as the API answers every command.
                issued = await commands.issue(log, event, within=30, with_caused=True)
                assert issued.accepted

            async def api_create(prefix: str, i: int) -> None:
                response = await api.post("/v1/namespaces", json={"name": f"{prefix}{i}"})
                assert response.status_code == 200, response.text

            async def client_read(i: int) -> None:
                await queries.namespaces(at_least=await commands.read_floor(log))

            async def api_read(i: int) -> None:
                assert (await api.get("/v1/namespaces")).status_code == 200

            # Warm both paths (connections, the Hive's first decisions) before measuring.
            await timed(20, lambda i: client_create("wc", i))
            await timed(20, lambda i: api_create("wa", i))

            # Alternated, so drift on a shared machine (or a growing state) hits both alike.
            client_cmd, api_cmd = await alternating(
                n, lambda i: client_create("c", i), lambda i: api_create("a", i)
            )
            client_read_s, api_read_s = await alternating(reads, client_read, api_read)
            result: dict[str, Any] = {
                "command": {"client": percentiles(client_cmd), "api": percentiles(api_cmd)},
                "commands_per_s": {
                    "client": await rate(n, concurrency, lambda i: client_create("cc", i)),
                    "api": await rate(n, concurrency, lambda i: api_create("ac", i)),
                },
                "read": {"client": percentiles(client_read_s), "api": percentiles(api_read_s)},
            }
            streamed, read = await sse_latency(api, log, max(10, n // 4))
            result["sse"] = {"api": percentiles(streamed), "client": percentiles(read)}
        await log.close()
        return result
    finally:
        proc.terminate()
        proc.wait(10)
        cluster.stop()
        server.stop()


async def sse_latency(
    api: httpx.AsyncClient, log: EventLog, n: int
) -> tuple[list[float], list[float]]:
    """Seconds from sending a command to its event arriving on an open SSE stream, and (the
    baseline) to its outcome being read from the log directly, for the same commands."""
    via_api: list[float] = []
    via_log: list[float] = []
    params = {"subject": "swarm.evt.namespace.>"}
    async with api.stream("GET", "/v1/events/stream", params=params) as live:
        lines = live.aiter_lines()
        await anext(lines)  # the stream is open
        for i in range(n):
            event = commands.prepare(
                payloads.CreateNamespace, {"name": f"sse{i}"}, identity="user:bench"
            )
            before = await log.last_sequence(names.STREAM_EVENTS)
            began = time.perf_counter()
            sent = await commands.send(log, event)

            async def streamed(name: str, began: float) -> float:
                async for line in lines:
                    if line.startswith("data:") and name in line:
                        break
                return time.perf_counter() - began

            async def read(sent: commands.Sent, start: int, began: float) -> float:
                outcome = await commands.wait_for_outcome(log, sent.id, start_seq=start, within=30)
                assert outcome is not None
                assert outcome.accepted
                return time.perf_counter() - began

            api_s, log_s = await asyncio.gather(
                streamed(f'"sse{i}"', began), read(sent, before + 1, began)
            )
            via_api.append(api_s)
            via_log.append(log_s)
    return via_api, via_log


async def main() -> None:
    parser = _common.arguments("gateway", __doc__, raw=True)
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    load_at_start = _common.load_average()
    console = Console()
    with (
        tempfile.TemporaryDirectory(prefix="swarm-bench-gateway-") as tmp,
        console.status("commands and reads through the API and the client layer"),
    ):
        result = await run(Path(tmp), args.commands, args.reads, args.concurrency)

    table = Table(title="HTTP API benchmark (same run, same machine, same Hive)")
    for col in ("measure", "HTTP API", "client layer (baseline)", "API / baseline"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    for what, key in (("command", "command"), ("read", "read")):
        for p in ("p50_ms", "p95_ms"):
            api, base = result[key]["api"][p], result[key]["client"][p]
            table.add_row(f"{what} {p}", f"{api:.1f}", f"{base:.1f}", f"{api / base:.2f}")
    api, base = result["commands_per_s"]["api"], result["commands_per_s"]["client"]
    table.add_row(
        f"commands/s, {args.concurrency} in flight",
        f"{api:,.0f}",
        f"{base:,.0f}",
        f"{api / base:.2f}",
    )
    for p in ("p50_ms", "p95_ms"):
        api, base = result["sse"]["api"][p], result["sse"]["client"][p]
        table.add_row(f"send→event seen {p}", f"{api:.1f}", f"{base:.1f}", f"{api / base:.2f}")
    console.print(table)

    report: dict[str, Any] = {
        **_common.report(
            "gateway",
            {"commands": args.commands, "reads": args.reads, "concurrency": args.concurrency},
            load_at_start,
        ),
        **result,
    }
    _common.write_report(args.json, report, console)


if __name__ == "__main__":
    asyncio.run(main())
