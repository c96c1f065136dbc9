"""Stream processing: the faust path (StreamApp) against a plain asyncio pull loop.

    .venv/bin/python bench/streaming.py [--events N] [--keys K1,K2,..] [--batch B]
                                        [--repeats R] [--json PATH]

Starts its own nats-server and, for each key count K, appends N CloudEvents envelopes (a
private bench event type, keys drawn uniformly from K) to a fresh stream, then counts them per
key, each path reading the same stream through its own durable pull consumer with
`max_ack_pending` = batch:

* plain: `fetch(batch)`, strict envelope decoding with the schema registry, `counts[key] += 1`
  in a dict, `msg.ack()` per message. No state survives a crash; this is the floor.
* faust: `swarm.kernel.streaming.StreamApp` with one table and one processor doing the same
  count; each batch goes through a faust channel and agent, and its table changes are committed
  to the JetStream changelog (one atomic append per batch, with the position) before the batch is
  acked. Its start (faust app, changelog recovery) is timed separately.

Each path runs `--repeats` times (fresh consumer and changelog each time) and the median is
reported. The ratio is faust / plain events per second (target >= 0.5). `run(n)` is what other
benchmarks import to include this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common, streamapp
from bench.streamapp import Run
from schemas import Payload, Registry, event, names
from swarm.devstack.embedded import EmbeddedNats
from swarm.kernel.eventlog import AppendRequest, EventLog
from swarm.kernel.settings import Settings
from swarm.kernel.streaming import StreamApp, StreamEvent, Tables

STREAM = "BENCH_STREAMING"
TARGET_RATIO = 0.5
#: Distinct keys: few (coalescing writes most of a batch into few changelog messages), some,
#: and so many that nearly every event writes a key of its own.
KEYS = (100, 1000, 10_000)

_REGISTRY = Registry()


@_REGISTRY.event("benchkey", "counted")
class BenchCounted(Payload):
    """One bench event: which key it counts for."""

    key: str
    n: int


async def _fill(log: EventLog, events: int, keys: int) -> Counter[str]:
    with contextlib.suppress(NotFoundError):
        await log.js.delete_stream(STREAM)
    await log.js.add_stream(StreamConfig(name=STREAM, subjects=[names.EVENTS_ALL]))
    expected: Counter[str] = Counter()
    requests = []
    rng = random.Random(42)
    for i in range(events):
        key = f"k{rng.randrange(keys)}"
        expected[key] += 1
        envelope = event(BenchCounted(key=key, n=i), aggregate_id=key, source="bench/streaming")
        requests.append(AppendRequest.of(envelope))
    for start in range(0, len(requests), 1000):
        await log.append_batch(requests[start : start + 1000])
    return expected


async def _plain(log: EventLog, events: int, batch: int, durable: str) -> tuple[Run, Counter[str]]:
    js: JetStreamContext = log.js
    await js.add_consumer(
        STREAM,
        ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=batch,
            ack_wait=30,
        ),
    )
    sub = await js.pull_subscribe_bind(durable, STREAM, pending_msgs_limit=batch * 4)
    counts: Counter[str] = Counter()
    seen = 0
    cpu, wall = time.process_time(), time.perf_counter()
    while seen < events:
        try:
            msgs = await sub.fetch(batch, timeout=2)
        except TimeoutError:
            continue
        for msg in msgs:
            envelope = _REGISTRY.decode(msg.data)
            counts[envelope.data.key] += 1
            await msg.ack()
        seen += len(msgs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await sub.unsubscribe()
    await js.delete_consumer(STREAM, durable)
    return Run(events / wall, cpu / events * 1e6), counts


def _count(tables: Tables, event: StreamEvent) -> None:
    tables["counts"][event.envelope.data.key] += 1


async def _faust(
    settings: Settings, log: EventLog, events: int, batch: int, name: str
) -> tuple[Run, Counter[str]]:
    app = StreamApp(name, settings, batch=batch)
    app.table("counts", default=int)
    app.processor(stream=STREAM, durable=name, decode=_REGISTRY.decode)(_count)
    last = await log.last_sequence(STREAM)
    begin = time.perf_counter()
    await app.start()
    started = time.perf_counter() - begin
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        await app.reached(name, last)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        counts = Counter(app.snapshot("counts"))
    finally:
        app.stop()
        await app.wait()
    await log.js.delete_consumer(STREAM, name)
    await log.js.delete_stream(names.changelog_stream(name))
    return Run(events / wall, cpu / events * 1e6, started), counts


async def run(
    n: int = 50_000,
    *,
    keys: Sequence[int] = KEYS,
    batch: int = 500,
    repeats: int = 3,
    nats_url: str | None = None,
) -> list[dict[str, Any]]:
    """Measure both paths over `n` events for each key count: two rows per key count (plain,
    then faust with its ratio to plain)."""
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        server = None if nats_url else EmbeddedNats(Path(tmp))
        url = nats_url or server.start()  # type: ignore[union-attr]
        try:
            rows: list[dict[str, Any]] = []
            for count in keys:
                rows += await _measure(url, n, count, batch, repeats)
            return rows
        finally:
            if server is not None:
                server.stop()


async def _measure(url: str, n: int, keys: int, batch: int, repeats: int) -> list[dict[str, Any]]:
    settings = Settings(nats_url=url)
    log = await EventLog.connect(url, settings, name="bench-streaming", ensure=False)
    plain_runs: list[Run] = []
    faust_runs: list[Run] = []
    try:
        expected = await _fill(log, n, keys)
        for i in range(repeats):
            run_plain, counted = await _plain(log, n, batch, f"plain{i}")
            if counted != expected:
                raise AssertionError("plain loop miscounted")
            run_faust, counted = await _faust(settings, log, n, batch, f"bench{i}")
            if counted != expected:
                raise AssertionError("faust path miscounted")
            plain_runs.append(run_plain)
            faust_runs.append(run_faust)
    finally:
        await log.close()
    return streamapp.rows(
        {"events": n, "keys": keys, "batch": batch, "repeats": repeats},
        plain=("plain asyncio pull loop", plain_runs),
        faust=("faust StreamApp + changelog", faust_runs),
        target_ratio=TARGET_RATIO,
    )


def main() -> None:
    parser = _common.arguments("streaming", __doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument(
        "--keys",
        default=",".join(map(str, KEYS)),
        help="comma-separated distinct key counts to measure",
    )
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_at_start = _common.load_average()
    keys = [int(k) for k in args.keys.split(",")]
    results = asyncio.run(run(args.events, keys=keys, batch=args.batch, repeats=args.repeats))
    table = Table(title=f"counting {args.events} events per key, batch {args.batch}")
    for column in ("keys", "path", "events/s", "CPU us/event", "faust/plain", "start s"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for row in results:
        table.add_row(
            f"{row['keys']:,}",
            row["path"],
            f"{row['events_per_s']:,.0f}",
            f"{row['cpu_us_per_event']:.1f}",
            f"{row['ratio']:.2f} (target >= {TARGET_RATIO})" if "ratio" in row else "",
            f"{row['start_s']:.2f}" if "start_s" in row else "",
        )
    Console().print(table)
    params = {"events": args.events, "keys": keys, "batch": args.batch, "repeats": args.repeats}
    report = {
        **_common.report(
            "streaming",
            params,
            load_at_start,
            nats_server=_common.nats_server_version(),
            nats_py=version("nats-py"),
            faust_streaming=version("faust-streaming"),
        ),
        "results": results,
    }
    _common.write_report(args.json, report)
    sys.exit(0)


if __name__ == "__main__":
    main()
