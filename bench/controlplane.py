"""The control plane the deploy benchmarks (bench/runtime.py, bench/agents.py) run against, as
`swarm up` starts it: an embedded nats-server, a one-replica Hive in a subprocess and the
scheduler in this process; and a watch that says when a deployed agent's replica is running."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import names
from services.hive.testing import HiveCluster
from services.scheduler import Scheduler, SchedulerSettings
from swarm.devstack.embedded import EmbeddedNats
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings
from swarm.kernel.streams import ensure_streams


class RunningWatch:
    """Follows `deployed` and `replica_running` events on a core subscription: name -> when."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}  # agent id -> name
        self.running: dict[str, float] = {}  # name -> first replica_running seen
        self._waiters: dict[str, asyncio.Future[float]] = {}

    async def subscribe(self, nc: Client) -> None:
        await nc.subscribe(f"{names.EVENTS_PREFIX}.agent.*.deployed", cb=self._deployed)
        await nc.subscribe(f"{names.EVENTS_PREFIX}.agent.*.replica_running", cb=self._running)

    async def _deployed(self, msg: Msg) -> None:
        body = json.loads(msg.data)
        self.names[body["data"]["agent_id"]] = body["data"]["name"]

    async def _running(self, msg: Msg) -> None:
        seen = time.perf_counter()
        agent_id = json.loads(msg.data)["data"]["agent_id"]
        name = self.names.get(agent_id)
        if name is None or name in self.running:
            return
        self.running[name] = seen
        waiter = self._waiters.pop(name, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(seen)

    def wait(self, name: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if name in self.running:
            future.set_result(self.running[name])
        else:
            self._waiters[name] = future
        return future


@dataclass(frozen=True, slots=True)
class ControlPlane:
    """What `control_plane` yields: the server's URL, a log connected to it, and the watch,
    subscribed before the scheduler started (so it misses no replica)."""

    url: str
    log: EventLog
    watch: RunningWatch


@contextlib.asynccontextmanager
async def control_plane(root: Path) -> AsyncIterator[ControlPlane]:
    """The control plane with its data under `root`, a Hive leader elected and the scheduler
    running; the scheduler, the Hive and the server stopped on the way out."""
    server = EmbeddedNats(root / "nats")
    url = server.start()
    (root / "hive").mkdir(parents=True, exist_ok=True)
    hive = HiveCluster(url, root / "hive", size=1)
    hive.start()
    scheduler = Scheduler(Settings(nats_url=url), SchedulerSettings())
    scheduler_task: asyncio.Task[None] | None = None
    try:
        log = await EventLog.connect(url, name="bench")
        await ensure_streams(log.js, Settings(nats_url=url))
        await hive.leader(log.nc, timeout=60)
        watch = RunningWatch()
        await watch.subscribe(log.nc)
        scheduler_task = asyncio.create_task(scheduler.run())
        yield ControlPlane(url, log, watch)
        await log.close()
    finally:
        scheduler.stop()
        if scheduler_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(scheduler_task, 15)
        hive.stop()
        server.stop()


async def pods_registered(log: EventLog, wanted: set[str], timeout: float = 60.0) -> None:
    """Wait until the Hive lists every pod in `wanted`."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        with contextlib.suppress(nats.errors.Error):
            reply = await log.nc.request(names.QUERY_PODS_LIST, b"{}", timeout=2)
            seen = {p.get("pod_id") for p in json.loads(reply.data).get("pods", [])}
            if wanted <= seen:
                return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"pods {sorted(wanted)} did not register in {timeout} s")
