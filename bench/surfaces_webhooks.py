"""Webhook deliveries per second to a local receiver, against plain httpx POSTs to the same one.

    .venv/bin/python bench/surfaces_webhooks.py [--events N] [--window W] [--repeats R]
                                                [--json PATH]

Starts its own nats-server and a receiver in a separate process (a minimal asyncio HTTP/1.1
server that answers 204 and counts, so the receiver is not what is measured and does not share
the dispatcher's interpreter). Each run:

* dispatcher: N events are on the log behind a new subscription (filter `swarm.evt.agent.>`);
  the clock starts when an in-process dispatcher is live and stops when it has delivered all N.
  That includes what a delivery costs here: the durable consumer's fetch and ack, the private-
  address check, the Standard Webhooks signature, the POST, and the attempt record awaited on
  the records stream before the ack;
* raw: the same N stored event bodies POSTed by plain httpx at the same concurrency (the window),
  with no signing, records or acks: what the HTTP path alone allows. Twice: through one-connection
  clients, as the dispatcher sends (the baseline its ratio is taken against), and through one
  shared client with `window` connections, which httpcore's pool makes much slower here.

The median of the repeats is reported; results go to bench/results/surfaces_webhooks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common
from schemas import event, events, names, new_id
from schemas.webhooks import WebhookAdded, WebhookRemoved
from services.webhooks.config import WebhookSettings
from services.webhooks.service import Dispatcher
from swarm.devstack.embedded import EmbeddedNats, free_port
from swarm.kernel.eventlog import AppendRequest, EventLog
from swarm.kernel.settings import Settings
from swarm.kernel.webhook_storage import fingerprint, new_secret, secrets_bucket

ROOT = Path(__file__).resolve().parent.parent
TARGET_PER_S = 500.0

# --- the receiver (runs as `surfaces_webhooks.py --receiver PORT`) -------------------------------

_OK = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"
_COUNT = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"


async def _receiver(port: int) -> None:
    received = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET /count"):
                    body = str(received).encode()
                    writer.write(_COUNT % (len(body), body))
                else:
                    received += 1
                    writer.write(_OK)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# --- the measurements ----------------------------------------------------------------------------


async def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def _received(client: httpx.AsyncClient, url: str) -> int:
    return int((await client.get(url.replace("/hook", "/count"))).text)


async def _dispatcher_run(
    log: EventLog, settings: Settings, url: str, n: int, window: int
) -> tuple[float, list[bytes]]:
    """Deliveries/s of the dispatcher for `n` events behind a new subscription."""
    secret = new_secret()
    webhook_id = new_id()
    kv = await secrets_bucket(log)
    await kv.put(webhook_id, secret.encode())
    added = WebhookAdded(
        webhook_id=webhook_id,
        url=url,
        filter=f"{names.EVENTS_PREFIX}.agent.>",
        secret_fingerprint=fingerprint(secret),
    )
    await log.append_batch(
        [AppendRequest.of(event(added, aggregate_id=webhook_id, source="bench"))]
    )
    envs = [
        event(
            events.ReplicaFailed(agent_id=a, replica_id=f"{a}-0", reason="bench: crash loop"),
            aggregate_id=a,
            source="bench",
        )
        for a in (new_id() for _ in range(n))
    ]
    for start in range(0, n, 500):
        await log.append_batch([AppendRequest.of(e) for e in envs[start : start + 500]])
    dispatcher = Dispatcher(settings, WebhookSettings(allow_private=True, window=window))
    task = asyncio.create_task(dispatcher.run())
    try:
        while not dispatcher.live.is_set():
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        began = time.perf_counter()
        worker = dispatcher.workers[webhook_id][0]
        while worker.delivered + worker.dead_lettered < n:
            if task.done():
                task.result()
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - began
        if worker.dead_lettered:
            raise RuntimeError(f"{worker.dead_lettered} deliveries failed")
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 30)
        # Removed, so the next run's dispatcher has this run's subscription on the log but idle.
        removed = WebhookRemoved(webhook_id=webhook_id, reason="bench run over")
        await log.append_batch(
            [AppendRequest.of(event(removed, aggregate_id=webhook_id, source="bench"))]
        )
    return n / elapsed, [e.to_json() for e in envs]


async def _raw_run(url: str, bodies: list[bytes], window: int, *, pooled: bool) -> float:
    """Plain httpx POSTs of the same bodies at the same concurrency: through one client with
    `window` connections, or (`pooled`) through `window` clients of one connection each, which
    is how the dispatcher sends (see services/webhooks/sender.py for why)."""
    headers = {"content-type": "application/cloudevents+json"}
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    limits = httpx.Limits(max_connections=1 if pooled else window)
    clients = [
        httpx.AsyncClient(follow_redirects=False, limits=limits, timeout=10.0)
        for _ in range(window if pooled else 1)
    ]

    async def lane(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            (await client.post(url, content=body, headers=headers)).raise_for_status()

    try:
        began = time.perf_counter()
        await asyncio.gather(*(lane(clients[i % len(clients)]) for i in range(window)))
        return len(bodies) / (time.perf_counter() - began)
    finally:
        for client in clients:
            await client.aclose()


def _start_receiver(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--receiver", str(port)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def run(root: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The `webhooks` case of bench/surfaces.py: one row in that table's shape (the dispatcher
    against raw httpx POSTs to the same receiver); the target is absolute (deliveries/s)."""
    os.makedirs(root, exist_ok=True)
    rows = await measure(
        args.webhook_events, window=args.webhook_window, repeats=args.repeats, base=root
    )
    dispatcher, raw = rows[0], rows[1]
    return [
        {
            "case": "webhooks",
            "measure": "deliveries/s to a local receiver",
            "swarm_per_s": dispatcher["per_s"],
            "raw": "httpx POSTs, one-connection clients",
            "raw_per_s": raw["per_s"],
            "runs": {"swarm": dispatcher["runs"], "raw": raw["runs"]},
            "target_per_s": TARGET_PER_S,
            "met_target_per_s": dispatcher["meets_target"],
            "events": dispatcher["events"],
            "window": dispatcher["window"],
        }
    ]


async def measure(
    n: int = 2000, *, window: int = 32, repeats: int = 3, base: Path | None = None
) -> list[dict[str, Any]]:
    """Rows of deliveries/s: the dispatcher and the raw httpx baseline, same receiver, same run."""
    with tempfile.TemporaryDirectory(prefix="swarm-bench-webhooks-", dir=base) as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        nats_url = server.start()
        port = free_port()
        receiver = _start_receiver(port)
        try:
            await _wait_port(port)
            url = f"http://127.0.0.1:{port}/hook"
            settings = Settings(nats_url=nats_url)
            log = await EventLog.connect(nats_url, settings, name="bench-webhooks")
            try:
                await log.ensure_streams()
                dispatched: list[float] = []
                raw: list[float] = []
                naive: list[float] = []
                async with httpx.AsyncClient() as probe:
                    for _ in range(repeats):
                        before = await _received(probe, url)
                        rate, bodies = await _dispatcher_run(log, settings, url, n, window)
                        after = await _received(probe, url)
                        if after - before < n:
                            raise RuntimeError(f"receiver got {after - before} of {n}")
                        dispatched.append(rate)
                        raw.append(await _raw_run(url, bodies, window, pooled=True))
                        naive.append(await _raw_run(url, bodies, window, pooled=False))
            finally:
                await log.close()
        finally:
            receiver.terminate()
            receiver.wait(10)
            server.stop()
    dispatcher_rate = statistics.median(dispatched)
    raw_rate = statistics.median(raw)
    common = {"events": n, "window": window, "repeats": repeats}
    return [
        {
            "case": "webhook deliveries (dispatcher)",
            "per_s": round(dispatcher_rate, 1),
            "runs": [round(r, 1) for r in dispatched],
            "raw_per_s": round(raw_rate, 1),
            "ratio": round(dispatcher_rate / raw_rate, 3),
            "target_per_s": TARGET_PER_S,
            "meets_target": dispatcher_rate >= TARGET_PER_S,
            **common,
        },
        {
            "case": "raw: httpx POSTs, one-connection clients",
            "per_s": round(raw_rate, 1),
            "runs": [round(r, 1) for r in raw],
            **common,
        },
        {
            "case": "raw: httpx POSTs, one shared client",
            "per_s": round(statistics.median(naive), 1),
            "runs": [round(r, 1) for r in naive],
            **common,
        },
    ]


def render(rows: Sequence[dict[str, Any]], console: Console) -> None:
    table = Table(title="webhook deliveries to a local receiver")
    for column in ("case", "events", "window", "per s (median)", "runs", "vs raw", "target"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["case"],
            str(row["events"]),
            str(row["window"]),
            f"{row['per_s']:,.0f}",
            ", ".join(f"{r:,.0f}" for r in row["runs"]),
            f"{row['ratio']:.2f}" if "ratio" in row else "",
            (
                f">= {TARGET_PER_S:.0f}: {'met' if row['meets_target'] else 'NOT met'}"
                if "meets_target" in row
                else ""
            ),
        )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _common.arguments("surfaces_webhooks", __doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--window", type=int, default=32, help="deliveries in flight")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--receiver", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver is not None:
        asyncio.run(_receiver(args.receiver))
        return 0
    if args.events < 1 or args.window < 1 or args.repeats < 1:
        parser.error("--events, --window and --repeats must be positive")
    console = _common.console()
    started, load = time.perf_counter(), _common.load_average()
    rows = asyncio.run(measure(args.events, window=args.window, repeats=args.repeats))
    render(rows, console)
    params = {"events": args.events, "window": args.window, "repeats": args.repeats}
    report = {
        **_common.report("surfaces_webhooks", params, load),
        "results": rows,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    _common.write_report(args.json, report, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
