"""Self-healing on a live stack: a recorded finding makes the Hive quarantine, rewind or roll
back the agent, and the pod carries it out (real nats-server, Hive, scheduler, pod, wasmtime)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from schemas import command, commands, names, utcnow
from schemas.healing import ReleaseAgent
from schemas.observer import ReportAnomaly, SignalEvidence
from schemas.specs import HealingPolicy
from swarm.cli.trace import Node, collect
from swarm.kernel.eventlog import AppendRequest
from tests.helpers.agents import COUNTER, ECHO
from tests.helpers.pods import agent, ask, cluster, count, deploy, running_on, running_pod, spec
from tests.helpers.stack import Stack
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


async def report(
    stack: Stack,
    agent_id: str,
    severity: str,
    kind: str,
    *,
    replica_id: str | None = None,
    began: datetime | None = None,
) -> str:
    """Send the Observer's command for a finding that began at `began` (a moment ago)."""
    now = utcnow()
    finding = ReportAnomaly(
        agent_id=agent_id,
        replica_id=replica_id,
        detector="robust-z",
        score=0.95,
        severity=severity,  # type: ignore[arg-type]
        kind=kind,
        window_start=began or now - timedelta(seconds=0.05),
        window_end=now,
        # Two signals beyond their thresholds: a confirmed finding (swarm/domain/heal.py).
        signals=[
            SignalEvidence(signal="fuel", value=5e9, baseline=1e6, score=50, threshold=6),
            SignalEvidence(signal="latency", value=900.0, baseline=2.0, score=40, threshold=6),
        ],
        summary=f"injected {kind}",
    )
    env = command(finding, source="test", identity="service:observer")
    await stack.client.append_batch([AppendRequest.of(env)])
    return env.id


async def test_a_critical_loop_quarantines_the_agent_and_its_pod_refuses_messages(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as stack, running_pod(stack, "p1"):
        await deploy(stack, "echo", ECHO)
        await running_on(stack, "echo", "p1")
        assert await ask(stack, "echo", b"hi") == (b"hi", False)
        agent_id = (await agent(stack, "echo"))["agent_id"]

        await report(stack, agent_id, "critical", "loop")

        async def quarantined() -> bool:
            return (await agent(stack, "echo")).get("quarantined") is not None

        await wait_until(quarantined, 45, "quarantine")
        view = await agent(stack, "echo")
        assert "critical loop anomaly" in view["quarantined"]["reason"]
        assert view["trust"] < 0.8
        assert [h["action"] for h in view["healing"]] == ["quarantine"]

        async def refused() -> bool:
            body, error = await ask(stack, "echo", b"hi")
            return error and b"agent is quarantined" in body

        await wait_until(refused, 45, "pod refusing messages")
        body, _ = await ask(stack, "echo", b"hi")
        assert "injected loop" in json.loads(body)["error"]

        await stack.send([(ReleaseAgent(agent_id=agent_id, reason="fixed"), "user:test")])

        async def answered() -> bool:
            return await ask(stack, "echo", b"again") == (b"again", False)

        await wait_until(answered, 45, "messages after release")


async def test_a_latency_spike_rewinds_the_replica_to_its_state_before_the_anomaly(
    tmp_path: Path,
) -> None:
    policy = HealingPolicy(on_critical="restart", rollback_on_regression=False)
    async with cluster(tmp_path) as stack, running_pod(stack, "p1"):
        await deploy(stack, "counter", COUNTER, healing=policy)
        await running_on(stack, "counter", "p1")
        assert [await count(stack, "counter") for _ in range(2)] == [1, 2]
        # Stop and start again, so the running replica resumed from a snapshot (state 2).
        await stack.send([(commands.StopAgent(name="counter"), "user:test")])

        async def stopped() -> bool:
            return (await agent(stack, "counter")).get("status") == "stopped"

        await wait_until(stopped, 45, "counter stopped")
        await stack.send([(commands.ScaleAgent(name="counter", replicas=1), "user:test")])
        await running_on(stack, "counter", "p1")
        view = await agent(stack, "counter")
        replica = next(r for r in view["instances"] if r["phase"] == "running")
        resumed_from = replica["snapshot"]
        assert resumed_from is not None
        # It goes on to 4, and the pod's interval snapshots save that under its own key.
        assert [await count(stack, "counter") for _ in range(2)] == [3, 4]
        await asyncio.sleep(0.6)  # two snapshot intervals
        began = utcnow()
        # Then the anomaly: the state moves on to 6, and that is saved too.
        assert [await count(stack, "counter") for _ in range(2)] == [5, 6]
        await asyncio.sleep(0.6)

        anomaly_id = await report(
            stack,
            view["agent_id"],
            "critical",
            "latency_spike",
            replica_id=replica["replica_id"],
            began=began,
        )

        async def rewound() -> bool:
            return bool(await stack.events_named("replica_rewound"))

        await wait_until(rewound, 45, "rewind")
        await asyncio.sleep(0.3)
        await running_on(stack, "counter", "p1")
        rewind = (await stack.events_named("replica_rewound"))[0]["data"]
        assert rewind["snapshot"] == resumed_from  # the fallback the log knows of
        assert rewind["replica_id"] == replica["replica_id"]
        # The newest state saved before the anomaly began (4), not the newest state (6).
        assert await count(stack, "counter") == 5
        # The log says which snapshot it resumed from: one of its own, older than the newest.
        starting = (await stack.events_named("replica_starting"))[-1]["data"]
        assert starting["snapshot"].startswith(f"{names.SNAPSHOTS_BUCKET}/{replica['replica_id']}@")

        # The whole chain is one trace: finding -> rewind -> new placement -> pod reports.
        (root,) = await collect(stack.client, anomaly_id, window=60)
        assert (root.id, root.type) == (anomaly_id, "swarm.cmd.anomaly.report")
        chain = [n.type for n in walk(root)]
        for step in (
            "swarm.agent.anomaly_detected",
            "swarm.cmd.replica.rewind",
            "swarm.agent.replica_rewound",
            "swarm.cmd.placement.propose",
            "swarm.agent.replica_running",
        ):
            assert step in chain, (step, chain)
        assert chain.index("swarm.cmd.replica.rewind") > chain.index("swarm.agent.anomaly_detected")


def walk(node: Node) -> list[Node]:
    return [node, *(n for child in node.children for n in walk(child))]


async def test_a_cost_blowup_right_after_a_rollout_rolls_back(tmp_path: Path) -> None:
    async with cluster(tmp_path) as stack, running_pod(stack, "p1"):
        await deploy(stack, "echo", ECHO)
        await running_on(stack, "echo", "p1")
        v2 = spec(ECHO).model_copy(update={"version": "v2"})
        await stack.send([(commands.RolloutAgent(name="echo", spec=v2), "user:test")])

        async def on(version: str) -> bool:
            view = await agent(stack, "echo")
            running = [r for r in view.get("instances", []) if r["phase"] == "running"]
            return (
                view.get("rollout") is None
                and view.get("version") == version
                and len(running) == 1
                and running[0]["version"] == version
            )

        await wait_until(lambda: on("v2"), 15, "v2 running")
        await asyncio.sleep(0.05)
        await report(stack, (await agent(stack, "echo"))["agent_id"], "critical", "cost_blowup")
        await wait_until(lambda: on("v1"), 15, "rolled back to v1")
        reverted = (await stack.events_named("reverted"))[0]["data"]
        assert (reverted["from_version"], reverted["to_version"]) == ("v2", "v1")
        assert "after version v2 was rolled out" in reverted["reason"]
        assert await ask(stack, "echo", b"still here") == (b"still here", False)
