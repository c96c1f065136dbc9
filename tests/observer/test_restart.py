"""An Observer SIGKILLed mid-stream and restarted loses no window and counts none twice.

The Observer runs as `python -m services.observer` against a real nats-server while metrics
stream in; it is killed with SIGKILL, restarted, and finally stopped. Its checkpointed per-agent
window counts and sums must equal a recount of the whole metrics stream from scratch, and the
anomaly reports on the command stream must be exactly the recount's findings, each once.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas import names
from services.observer.analysis import AgentState, Observatory
from services.observer.scoring import DetectorConfig
from swarm.kernel.embedded import EmbeddedNats
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ("agent-1", "agent-2", "agent-3")
ENV = {
    "SWARM_OBSERVER_WINDOW_S": "1",
    "SWARM_OBSERVER_WARMUP_WINDOWS": "4",
    "SWARM_OBSERVER_CHECKPOINT_S": "0.2",
    "SWARM_OBSERVER_STORE_BEHAVIOUR": "false",
}


def start_observer(url: str, root: Path, n: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, **ENV, "SWARM_NATS_URL": url, "PYTHONPATH": str(ROOT)}
    with (root / f"observer-{n}.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.observer"], env=env, stdout=out, stderr=out
        )


async def position(event_log: EventLog) -> int:
    try:
        kv = await event_log.js.key_value(names.OBSERVER_BUCKET)
        entry = await kv.get(names.OBSERVER_POSITION_KEY)
    except Exception:
        return 0
    return int(json.loads(entry.value or b"{}").get("metrics_seq", 0))


async def publish(event_log: EventLog, seconds: float, spike_after: float) -> int:
    """Pod metrics at 20 Hz for three agents; agent-2's calls get 8x slower after a while."""
    rng = random.Random(5)
    counters = {a: [0, 0, 0, 0.0] for a in AGENTS}
    started = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - started) < seconds:
        rows = []
        for agent in AGENTS:
            c = counters[agent]
            calls = rng.randint(3, 5)
            slow = 8 if agent == "agent-2" and elapsed > spike_after else 1
            c[0] += calls
            c[2] += calls * 1000
            c[3] += calls * 10 * slow * rng.uniform(0.9, 1.1)
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
        body = json.dumps({"pod_id": "p1", "replicas": rows}).encode()
        await event_log.js.publish(names.metrics_subject("p1", "agent"), body)
        sent += 1
        await asyncio.sleep(0.05)
    return sent


async def test_killed_observer_resumes_without_losing_or_double_counting(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        event_log = await EventLog.connect(url, Settings(nats_url=url), name="test")
        await event_log.ensure_streams()
        procs.append(start_observer(url, tmp_path, 1))
        feed = asyncio.create_task(publish(event_log, 9.0, spike_after=6.0))
        # Kill it once it has checkpointed some windows, mid-stream.
        deadline = time.monotonic() + 20
        while await position(event_log) < 40:
            assert time.monotonic() < deadline, "observer never checkpointed"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.33)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(5)
        await asyncio.sleep(1.0)
        procs.append(start_observer(url, tmp_path, 2))
        sent = await feed
        assert sent > 120
        last = await event_log.last_sequence(names.STREAM_METRICS)
        deadline = time.monotonic() + 20
        while await position(event_log) < last:
            assert time.monotonic() < deadline, "restarted observer did not catch up"
            await asyncio.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(10) == 0

        # The recount: the whole stream through a fresh core, nothing killed.
        recount = Observatory(DetectorConfig(warmup_windows=4), 1.0)
        async for d in event_log.replay(names.STREAM_METRICS):
            recount.apply_metrics(d.stream_seq, d.timestamp.timestamp(), d.data)

        kv = await event_log.js.key_value(names.OBSERVER_BUCKET)
        for agent in AGENTS:
            entry = await kv.get(names.observer_agent_key(agent))
            _, saved = pickle.loads(entry.value or b"")
            assert isinstance(saved, AgentState)
            fresh = recount.agents[agent]
            assert saved.windows == fresh.windows > 5
            assert saved.calls == fresh.calls
            assert saved.findings == fresh.findings
            assert saved.aggregator.open == fresh.aggregator.open
            assert saved.metrics_seq == fresh.metrics_seq == last

        findings = sum(a.findings for a in recount.agents.values())
        assert recount.agents["agent-2"].findings >= 1
        reports = [
            d.msg_id
            async for d in event_log.replay(names.STREAM_COMMANDS)
            if d.subject == names.command_subject("anomaly", "report")
        ]
        assert len(reports) == len(set(reports)) == findings
        await event_log.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        server.stop()
