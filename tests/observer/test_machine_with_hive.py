"""A machine-wide slowdown, end to end: the Observer service (a real stream app on a real
nats-server) reports it as `pod.report_anomaly`, the Hive records it on the pod
(`pod.anomaly_detected`, shown by the pods query), and no agent is acted on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas import names
from services.observer import Observer, ObserverSettings
from swarm.kernel.settings import Settings
from tests.helpers.services import in_this_loop
from tests.helpers.stack import Stack, running_stack
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

AGENTS = 8
CONFIG = ObserverSettings(
    window_s=0.5, warmup_windows=3, critical_warmup_windows=3, store_behaviour=False
)


@contextlib.asynccontextmanager
async def observing(stack: Stack) -> AsyncIterator[Observer]:
    observer = Observer(Settings(nats_url=stack.url), CONFIG)
    async with in_this_loop(observer, live_within=20, stop_within=20):
        yield observer


async def publish(stack: Stack, seconds: float, slow_after: float) -> None:
    """Pod p1's metrics at 20 Hz for `AGENTS` agents; every agent's calls 5x slower after
    `slow_after` seconds (the machine, not the agents)."""
    started = time.monotonic()
    calls, latency = [0] * AGENTS, [0.0] * AGENTS
    while (elapsed := time.monotonic() - started) < seconds:
        rows = []
        for a in range(AGENTS):
            calls[a] += 4
            latency[a] += 4 * (2 + a) * (5 if elapsed > slow_after else 1)
            rows.append(
                {
                    "agent_id": f"m-agent-{a}",
                    "replica_id": f"m-agent-{a}-r",
                    "namespace": "default",
                    "name": f"m{a}",
                    "calls": calls[a],
                    "errors": 0,
                    "fuel_used": calls[a] * 1000,
                    "last_latency_ms": 2 + a,
                    "busy_ms": latency[a],
                    "memory_bytes": 2**22,
                    "mailbox": 0,
                }
            )
        body = json.dumps({"pod_id": "p1", "replicas": rows}).encode()
        await stack.client.js.publish(names.metrics_subject("p1", "agent"), body)
        await asyncio.sleep(0.05)


async def test_a_slow_machine_is_recorded_on_its_pod_and_no_agent_is_blamed(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path) as stack, observing(stack) as observer:
        await stack.register_pods({"p1": (1024, 16)})
        await publish(stack, seconds=8.0, slow_after=5.0)

        async def recorded() -> bool:
            return bool(await stack.events_named("anomaly_detected"))

        await wait_until(recorded, 30, "a recorded finding")
        (found,) = await stack.events_named("anomaly_detected")
        assert found["type"] == "swarm.pod.anomaly_detected"
        assert found["subject"] == "p1"
        data = found["data"]
        assert (data["scope"], data["kind"], data["pod_id"]) == ("pod", "slowdown", "p1")
        assert data["deviations"][0]["deviating"] >= 5
        # The first window of the slowdown may hold some samples from before it (the publisher
        # is not punctual on a loaded machine): slower, by up to 5x.
        assert 1.2 < data["deviations"][0]["ratio"] < 7
        assert {a["agent_id"] for a in data["agents"]} <= {f"m-agent-{a}" for a in range(AGENTS)}

        (pod,) = await stack.pods()
        assert [a["kind"] for a in pod["anomalies"]] == ["slowdown"]
        assert pod["anomalies"][0]["anomaly_id"] == data["anomaly_id"]
        # The Observer sent no report about any agent (each one's slowdown is the machine's).
        assert observer.reports_sent == 1
        commands = []
        async for d in stack.client.replay(names.STREAM_COMMANDS):
            commands.append(json.loads(d.data)["type"])
        assert "swarm.cmd.anomaly.report" not in commands
        assert "swarm.cmd.pod.report_anomaly" in commands
