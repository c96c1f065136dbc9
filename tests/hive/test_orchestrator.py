"""The Agent Orchestrator's self-healing, end to end: a real Hive (with its reconcile loop) and
the real scheduler on real JetStream, with the test playing the pods."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from schemas import commands, names
from schemas.specs import AgentSpec, Capacity, ModuleRef, Resources, RestartPolicy
from services.scheduler import Scheduler, SchedulerSettings
from swarm.kernel.settings import Settings
from tests.helpers.history import WASM
from tests.helpers.pods import events
from tests.helpers.services import in_this_loop
from tests.helpers.stack import Stack, running_stack
from tests.helpers.waiting import wait_until

# Waits are generous: beside busy loops the in-process Hive and pods run seconds late (a
# 10 s wait for a placement ran out in a stress run); the waits end on the event itself.
pytestmark = pytest.mark.timeout(240)

MODULE = ModuleRef(inline=WASM)


@contextlib.asynccontextmanager
async def orchestra(root: Path) -> AsyncIterator[Stack]:
    async with running_stack(root) as stack:
        # Most-free, not the default market: these tests expect replicas on the biggest pod.
        scheduler = Scheduler(Settings(nats_url=stack.url), SchedulerSettings(policy="most-free"))
        async with in_this_loop(scheduler, live_within=None):
            yield stack


async def agent(stack: Stack, name: str) -> dict[str, Any]:
    """The agent as the Hive reports it; waits for the deploy to be folded first."""
    answer: dict[str, Any] = {}

    async def found() -> bool:
        nonlocal answer
        answer = await stack.query(names.QUERY_AGENTS_GET, {"name": name})
        return "agent" in answer

    await wait_until(found, 45, f"agent {name} known to the Hive")
    result: dict[str, Any] = answer["agent"]
    return result


async def heartbeat(stack: Stack, pod_id: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await stack.client.nc.publish(names.heartbeat_subject(pod_id), b"")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def report(
    stack: Stack, agent_id: str, replica: dict[str, Any], status: str, **kw: Any
) -> None:
    payload = commands.ReportReplica(
        agent_id=agent_id,
        replica_id=replica["replica_id"],
        pod_id=replica["pod_id"],
        status=status,
        **kw,
    )
    await stack.send([(payload, f"pod:{replica['pod_id']}")])


async def test_a_pod_whose_lease_expires_has_its_replicas_rescheduled(tmp_path: Path) -> None:
    async with orchestra(tmp_path) as stack:
        await stack.send(
            [
                (
                    commands.RegisterPod(
                        pod_id="doomed",
                        capacity=Capacity(memory_mb=4096, fuel_per_s=10**12, slots=10),
                        # Long enough that a test process starved for a second or two (three
                        # workers and a benchmark on two cores) does not lose the pod early: it
                        # was found on the spare pod before the placement was seen.
                        lease_s=5.0,
                    ),
                    "pod:doomed",
                ),
                (
                    commands.RegisterPod(
                        pod_id="spare",
                        capacity=Capacity(memory_mb=1024, fuel_per_s=10**12, slots=10),
                        lease_s=3600,
                    ),
                    "pod:spare",
                ),
            ]
        )
        stop = asyncio.Event()
        beats = asyncio.create_task(heartbeat(stack, "doomed", stop))
        spec = AgentSpec(version="v1", module=MODULE, resources=Resources(memory_mb=128))
        await stack.send(
            [(commands.DeployAgent(name="worker", spec=spec, replicas=2), "user:test")]
        )

        async def on(pod: str) -> bool:
            replicas = (await agent(stack, "worker"))["instances"]
            return all(r["pod_id"] == pod and r["phase"] == "scheduled" for r in replicas)

        await wait_until(lambda: on("doomed"), 45, "replicas placed on the biggest pod")
        # Running, with a snapshot, before the pod goes silent.
        info = await agent(stack, "worker")
        for replica in info["instances"]:
            await report(stack, info["agent_id"], replica, "starting", snapshot="snap-42")
            await report(stack, info["agent_id"], replica, "running")
        await wait_until(lambda: _status(stack, "worker", "running"), 45, "agent running")

        stop.set()
        await beats
        await wait_until(lambda: on("spare"), 45, "replicas rescheduled to the spare pod")
        pods = {p["pod_id"]: p for p in await stack.pods()}
        assert pods["doomed"]["status"] == "lost"
        assert pods["doomed"]["replicas"] == 0
        info = await agent(stack, "worker")
        assert {r["snapshot"] for r in info["instances"]} == {"snap-42"}
        assert all(
            "lease expired" in r["reason"] or r["phase"] == "scheduled" for r in info["instances"]
        )
        lost = [e async for e in events(stack, "swarm.pod.lost")]
        assert len(lost) == 1
        assert "lease expired" in lost[0]["data"]["reason"]


async def test_a_crashing_replica_backs_off_then_fails(tmp_path: Path) -> None:
    async with orchestra(tmp_path) as stack:
        await stack.register_pods({"p1": (1024, 10)})
        spec = AgentSpec(
            version="v1",
            module=MODULE,
            restart=RestartPolicy(max_restarts=2, backoff_s=0.3, max_backoff_s=5, window_s=300),
        )
        await stack.send([(commands.DeployAgent(name="flaky", spec=spec, replicas=1), "user:test")])
        for _crash in range(3):
            await wait_until(lambda: _phase(stack, "flaky", "scheduled"), 45, "replica placed")
            info = await agent(stack, "flaky")
            replica = info["instances"][0]
            await report(stack, info["agent_id"], replica, "running")
            await wait_until(lambda: _phase(stack, "flaky", "running"), 45, "replica running")
            await report(
                stack,
                info["agent_id"],
                replica,
                "crashed",
                reason="trap: out of bounds",
                snapshot="s1",
            )
            await wait_until(
                lambda: _phase(stack, "flaky", "crashed", "scheduled", "requested", "failed"),
                45,
                "crash seen",
            )
        await wait_until(lambda: _status(stack, "flaky", "failed"), 45, "agent failed")
        info = await agent(stack, "flaky")
        assert "crash loop" in info["reason"]
        crashes = [e["data"] async for e in events(stack, "swarm.agent.replica_crashed")]
        assert [c["crashes"] for c in crashes] == [1, 2, 3]
        # Exponential backoff: 0.3 s, then 0.6 s; the third crash is not restarted.
        delays = [
            (_t(c["restart_at"]) - _t(e["time"]))
            for c, e in zip(
                crashes[:2],
                [x async for x in events(stack, "swarm.agent.replica_crashed")],
                strict=False,
            )
        ]
        assert [round(d, 1) for d in delays] == [0.3, 0.6]
        assert crashes[2]["restart_at"] is None
        restarts = [e async for e in events(stack, "swarm.agent.replica_requested")]
        assert [r["data"]["snapshot"] for r in restarts[1:]] == ["s1", "s1"]


def _t(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


async def _status(stack: Stack, name: str, status: str) -> bool:
    return bool((await agent(stack, name))["status"] == status)


async def _phase(stack: Stack, name: str, *phases: str) -> bool:
    return all(r["phase"] in phases for r in (await agent(stack, name))["instances"])
