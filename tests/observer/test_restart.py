"""An Observer SIGKILLed mid-stream and restarted loses no window and counts none twice.

The Observer runs as `python -m services.observer` (a StreamApp over SWARM_METRICS and
SWARM_LOGS) against a real nats-server while metrics stream in; it is killed with SIGKILL twice,
each time mid-stream, restarted, and finally stopped. Its tables, as the app recovers them from
the changelog, must equal the state of a core that read the whole metrics stream from scratch,
exactly (windows in progress, counts, detectors, centroids), and the anomaly reports on the
command stream must be exactly the recount's findings, each once. A malformed metrics message
in the middle is dead-lettered with its reason and skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas import names
from services.observer.analysis import AgentState, DeploymentState, Observatory
from services.observer.config import ObserverSettings
from services.observer.stream import build_app
from swarm.devstack.embedded import EmbeddedNats
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings
from swarm.kernel.streaming._table import encode_key
from swarm.kernel.streaming._transport import key_token

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ("agent-1", "agent-2", "agent-3")
ENV = {
    "SWARM_OBSERVER_WINDOW_S": "1",
    "SWARM_OBSERVER_WARMUP_WINDOWS": "4",
    "SWARM_OBSERVER_FETCH_BATCH": "20",
    "SWARM_OBSERVER_STORE_BEHAVIOUR": "false",
    # Shared by the three observers, as `swarm up` shares one: a report a killed observer sent
    # before its batch was committed is sent again, with the same id, only if the key is the
    # same (each process draws its own otherwise, and JetStream keeps both).
    "SWARM_COMMAND_ID_SECRET": "observer-restart-test-secret",
}
CONFIG = ObserverSettings(window_s=1, warmup_windows=4, store_behaviour=False)
MALFORMED = b'{"pod_id": "p1", "replicas": [{"agent_id": "agent-1"}]}'


def start_observer(url: str, root: Path, n: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, **ENV, "SWARM_NATS_URL": url, "PYTHONPATH": str(ROOT)}
    with (root / f"observer-{n}.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.observer"], env=env, stdout=out, stderr=out
        )


async def position(event_log: EventLog) -> int:
    """The metrics processor's committed position, as its changelog holds it."""
    prefix = names.changelog_table_prefix(names.OBSERVER_APP, names.CHANGELOG_POSITIONS)
    token = key_token(encode_key(names.OBSERVER_METRICS_PROCESSOR))
    try:
        msg = await event_log.js.get_last_msg(
            names.changelog_stream(names.OBSERVER_APP), f"{prefix}.{token}"
        )
    except Exception:
        return 0
    return int(json.loads(msg.data or b"{}")["seq"])


class Feed:
    """Pod metrics for three agents (cumulative counters); agent-2's calls get 8x slower after
    a while; one malformed message half way."""

    def __init__(self, event_log: EventLog, spike_after: float) -> None:
        self.event_log = event_log
        self.spike_after = spike_after
        self.rng = random.Random(5)
        self.counters = {a: [0, 0, 0, 0.0] for a in AGENTS}
        self.started = time.monotonic()
        self.subject = names.metrics_subject("p1", "agent")
        self.sent = 0
        self.malformed = False

    def body(self) -> bytes:
        elapsed = time.monotonic() - self.started
        rows = []
        for agent in AGENTS:
            c = self.counters[agent]
            calls = self.rng.randint(3, 5)
            slow = 8 if agent == "agent-2" and elapsed > self.spike_after else 1
            c[0] += calls
            c[2] += calls * 1000
            c[3] += calls * 10 * slow * self.rng.uniform(0.9, 1.1)
            rows.append(
                {
                    "agent_id": agent,
                    "replica_id": f"{agent}-r",
                    "namespace": "default",
                    "name": agent,
                    "calls": c[0],
                    "errors": 0,
                    "fuel_used": c[2],
                    "last_latency_ms": 10 * slow,
                    "busy_ms": c[3],
                    "memory_bytes": 2**22,
                    "mailbox": 0,
                }
            )
        self.sent += 1
        return json.dumps({"pod_id": "p1", "replicas": rows}).encode()

    async def paced(self, seconds: float, until: asyncio.Event | None = None) -> int:
        """20 messages a second, `20 * seconds` of them (longer on a loaded machine: the test
        counts on how many were sent, not on how long it took), and on until `until` is set."""
        n = 0
        while n < round(20 * seconds) or (until is not None and not until.is_set()):
            n += 1
            await self.event_log.js.publish(self.subject, self.body())
            if self.sent >= 100 and not self.malformed:
                self.malformed = True
                await self.event_log.js.publish(self.subject, MALFORMED)
            await asyncio.sleep(0.05)
        return self.sent

    async def burst(self, n: int) -> None:
        """`n` messages at once: a backlog the observer is busy with when it is killed."""
        acks = [await self.event_log.js.publish_async(self.subject, self.body()) for _ in range(n)]
        await asyncio.gather(*acks)


async def until_position(event_log: EventLog, seq: int, stall: float, what: str) -> None:
    """Until the committed position reaches `seq`; fails when it has not moved for `stall`
    seconds (a restart is started, recovers and works off a backlog at the machine's pace: a
    fixed 30 s to catch up was too little with the suite and four busy loops on two cores)."""
    seen, moved = await position(event_log), time.monotonic()
    while seen < seq:
        await asyncio.sleep(0.05)
        now = await position(event_log)
        if now != seen:
            seen, moved = now, time.monotonic()
        assert time.monotonic() - moved < stall, f"{what} (at {seen} of {seq})"


async def test_killed_observer_resumes_without_losing_or_double_counting(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        event_log = await EventLog.connect(url, Settings(nats_url=url), name="test")
        source = Feed(event_log, spike_after=6.5)
        # Paced on until both kills are done: on a loaded machine the observer reached its
        # second target after a 10 s feed had ended, and the "mid-stream" kill came at the end.
        killed_twice = asyncio.Event()
        feed = asyncio.create_task(source.paced(10.0, until=killed_twice))
        # Kill it twice, each time once it has committed more windows, mid-stream: while it
        # works through a backlog of small batches (in a handler, between a batch's keys and
        # its position, or at an ack).
        killed_at = []
        for n, target in enumerate((40, 300)):
            procs.append(start_observer(url, tmp_path, n))
            await until_position(event_log, target, 30, f"observer {n} never committed")
            await source.burst(150)
            await asyncio.sleep(random.uniform(0.02, 0.2))
            procs[-1].send_signal(signal.SIGKILL)
            assert procs[-1].wait(5) == -signal.SIGKILL
            killed_at.append(await position(event_log))
        killed_twice.set()
        procs.append(start_observer(url, tmp_path, 2))
        await feed
        # Paced and burst messages alike (a burst may come after the paced feed ended).
        assert source.sent > 450
        last = await event_log.last_sequence(names.STREAM_METRICS)
        assert all(p < last for p in killed_at), (killed_at, last)
        await until_position(event_log, last, 30, "restarted observer did not catch up")
        procs[-1].send_signal(signal.SIGTERM)
        assert procs[-1].wait(15) == 0

        # The recount: the whole stream through a fresh core, nothing killed.
        recount = Observatory(CONFIG.detector(), CONFIG.window_s)
        async for d in event_log.replay(names.STREAM_METRICS):
            recount.apply_metrics(d.stream_seq, d.timestamp.timestamp(), d.data)
        assert recount.malformed == 1

        # What the observer's tables hold, as its app recovers them.
        app = build_app(Settings(nats_url=url), CONFIG)
        async with app:
            windows = app.snapshot(names.OBSERVER_TABLE_WINDOWS)
            detectors = app.snapshot(names.OBSERVER_TABLE_DETECTORS)
            deployments = app.snapshot(names.OBSERVER_TABLE_DEPLOYMENTS)
            assert app.position(names.OBSERVER_METRICS_PROCESSOR) == last
        assert app.stats.rolled_back_keys == 0  # the last stop was clean
        assert set(windows) == set(AGENTS)
        for agent in AGENTS:
            saved = AgentState.from_json(windows[agent], detectors[agent], CONFIG.detector())
            fresh = recount.agents[agent]
            assert saved.windows == fresh.windows > 5
            assert saved.calls == fresh.calls
            assert saved.findings == fresh.findings
            assert saved.aggregator.open == fresh.aggregator.open
            assert saved.metrics_seq == fresh.metrics_seq >= last - 1
            # All of it, detectors included, exactly.
            assert saved.window_json() == fresh.window_json()
            assert saved.analysis.to_json() == fresh.analysis.to_json()
        centroid = DeploymentState.from_json(deployments["default"])
        assert centroid.to_json() == recount.deployments["default"].to_json()

        findings = sum(a.findings for a in recount.agents.values())
        assert recount.agents["agent-2"].findings >= 1
        reports = [
            d.msg_id
            async for d in event_log.replay(names.STREAM_COMMANDS)
            if d.subject == names.command_subject("anomaly", "report")
        ]
        assert len(reports) == len(set(reports)) == findings

        dead = [d async for d in event_log.replay(names.STREAM_DEADLETTER)]
        assert [d.data for d in dead] == [MALFORMED]
        assert dead[0].headers[names.HEADER_DEADLETTER_REASON].startswith("malformed: ")
        await event_log.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        server.stop()
