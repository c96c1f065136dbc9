"""Pods forget deleted agents: deleting agents whose replicas run on a pod stops the replicas,
and the pod sends the Hive no report about a replica it no longer has (measured before: 4,751
reports rejected with "agent … not found; stop the replica" after agents were deleted)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest

from runtime.pod import Pod
from runtime.replica import Replica
from schemas import commands, names
from schemas.specs import MAX_FUEL_PER_CALL, Limits
from tests.helpers.agents import BUSY, LOOP
from tests.helpers.pods import (
    ask,
    cluster,
    deploy,
    events,
    report_outcomes,
    running_on,
    running_pod,
)
from tests.helpers.stack import Stack
from tests.helpers.waiting import true, wait_until

pytestmark = pytest.mark.timeout(120)

AGENTS = [f"gone-{n}" for n in range(4)]
REFUSING = {"not_found", "not_assigned"}
#: Room for the BUSY agent's long calls.
SLOW = Limits(deadline_ms=60_000, fuel_per_call=MAX_FUEL_PER_CALL)


async def busy_replicas(
    stack: Stack, pod: Pod, limits: Limits, busy_ms: int, *, timeout: float, calls_each: int = 1
) -> tuple[set[str], dict[str, Replica], list[asyncio.Task[Any]]]:
    """AGENTS (BUSY, with `limits`) running on pod p1, and `calls_each` calls of `busy_ms` sent
    to each of their replicas, every replica in its first: their agent ids, their replicas on
    the pod and the calls (each waiting up to `timeout` seconds for its reply)."""
    for name in AGENTS:
        await deploy(stack, name, BUSY, limits=limits)
    for name in AGENTS:
        await running_on(stack, name, "p1")
    agent_ids = {a.agent_id for a in pod.view.agents.values() if a.name in AGENTS}
    replicas = {rid: r for rid, r in pod.replicas.items() if r.assignment.agent_id in agent_ids}
    body = struct.pack("<I", busy_ms)
    calls = [
        asyncio.create_task(
            stack.client.nc.request(names.mesh_replica_subject(rid), body, timeout=timeout)
        )
        for rid in replicas
        for _ in range(calls_each)
    ]
    await wait_until(lambda: true(all(r.in_call for r in replicas.values())), 30, "calls")
    return agent_ids, replicas, calls


async def test_deleted_agents_replicas_stop_and_are_reported_once_however_slow_the_hive(
    tmp_path: Path,
) -> None:
    """A replica reports `stopped` when it ends; the Hive folds that report later (here: it is
    down meanwhile, as a loaded Hive is slow). Until then the pod's view still says stopping,
    and the pod must not answer a second time ("not running"): once the first report has made
    the Hive forget the deleted agent, that second one would be refused."""
    busy_ms = 6000
    async with cluster(tmp_path) as stack, running_pod(stack, "p1") as (pod, _):
        agent_ids, replicas, calls = await busy_replicas(stack, pod, SLOW, busy_ms, timeout=90)

        await stack.send([(commands.DeleteAgent(name=name), "user:test") for name in AGENTS])
        await wait_until(lambda: true(not replicas.keys() & pod.replicas.keys()), 30, "stopping")
        await stack.stop_hive()
        assert all(r.in_call for r in replicas.values()), "the calls ended too early to tell"
        await asyncio.gather(*calls)
        await wait_until(lambda: true(all(r.done for r in replicas.values())), 30, "ended")

        async def reported() -> bool:
            sent = await report_outcomes(stack)
            return {r.replica_id for r in sent if r.status == "stopped"} >= replicas.keys()

        await wait_until(reported, 30, "every replica reported stopped")
        # The pod keeps reconciling (20 times a second) while the Hive restarts.
        await stack.start_hive()

        async def forgotten() -> bool:
            return not any(r.agent_id in agent_ids for r in pod.view.replicas.values())

        await wait_until(forgotten, 60, "the deleted agents forgotten by the pod")
        stopped = [e["data"] async for e in events(stack, "swarm.agent.replica_stopped")]
        assert sorted(e["replica_id"] for e in stopped) == sorted(replicas)
        await no_refused_reports(stack, agent_ids)
        sent = await report_outcomes(stack)
        assert sorted(r.replica_id for r in sent if r.status == "stopped") == sorted(replicas)


async def test_a_replica_the_hive_forgot_while_it_finished_a_call_is_not_reported(
    tmp_path: Path,
) -> None:
    """The race behind the measured rejections: the Hive forgets a stopping replica (its pod was
    declared lost, or drained) while the pod still runs it; when the replica ends, the pod must
    not report it: the log says it is gone."""
    busy_ms = 8000
    async with cluster(tmp_path) as stack, running_pod(stack, "p1") as (pod, _):
        # Each replica busy in a long call, and one more message waiting in its mailbox.
        agent_ids, replicas, calls = await busy_replicas(
            stack,
            pod,
            Limits(deadline_ms=4 * busy_ms, fuel_per_call=MAX_FUEL_PER_CALL),
            busy_ms,
            timeout=busy_ms / 1000 + 60,
            calls_each=2,
        )

        await stack.send([(commands.DeleteAgent(name=name), "user:test") for name in AGENTS])
        # The pod stops them at once; they end when their call does.
        await wait_until(lambda: true(not replicas.keys() & pod.replicas.keys()), 30, "stopping")
        # Meanwhile the Hive forgets them: their pod is drained (as when it is declared lost).
        await stack.send([(commands.DeregisterPod(pod_id="p1"), "pod:p1")])

        async def forgotten() -> bool:
            return not any(r.agent_id in agent_ids for r in pod.view.replicas.values())

        await wait_until(forgotten, 30, "the pod's view forgot the replicas")
        assert all(r.in_call for r in replicas.values()), "the calls ended too early to tell"

        replies = await asyncio.gather(*calls)
        # The call in flight ends; the one waiting is not run for a deleted agent.
        refused = [bool(m.headers and m.headers.get(names.HEADER_AGENT_ERROR)) for m in replies]
        assert sorted(refused) == [False] * len(replicas) + [True] * len(replicas)
        await wait_until(lambda: true(all(r.done for r in replicas.values())), 30, "ended")
        await no_refused_reports(stack, agent_ids)
        # Their `stopped` reports were dropped at the pod, and counted.
        assert pod.reports_dropped >= len(replicas)
        assert pod.metrics_json()["reports_dropped"] == pod.reports_dropped
        stopped = [e["data"] async for e in events(stack, "swarm.agent.replica_stopped")]
        assert {e["replica_id"] for e in stopped} == replicas.keys()


async def test_a_report_in_flight_while_its_replica_is_forgotten_is_refused_once(
    tmp_path: Path,
) -> None:
    """The race the pod cannot see coming: its report is on its way when the Hive forgets the
    replica. The Hive refuses it (`not_found`); the pod folds the refusal, counts it and says no
    more about that replica."""
    async with cluster(tmp_path) as stack, running_pod(stack, "p1") as (pod, _):
        await deploy(stack, "spinner", LOOP, limits=Limits(deadline_ms=300))
        await running_on(stack, "spinner", "p1")
        ((replica_id, replica),) = pod.replicas.items()
        # Decided before the report that follows: the agent is deleted and its pod drained.
        await stack.stop_hive()
        await stack.send([(commands.DeleteAgent(name="spinner"), "user:test")])
        await stack.send([(commands.DeregisterPod(pod_id="p1"), "pod:p1")])
        # The replica breaks and reports it: as far as the pod can tell, it is still its own.
        _, error = await ask(stack, "spinner", b"go", timeout=30)
        assert error
        await wait_until(lambda: true(replica.done), 30, "the replica broke")

        async def crash_reported() -> bool:
            return any(
                r.replica_id == replica_id and r.status == "crashed"
                for r in await report_outcomes(stack)
            )

        await wait_until(crash_reported, 30, "the crash reported")
        await stack.start_hive()

        async def refused() -> bool:
            return pod.view.refusals == 1

        await wait_until(refused, 60, "the refusal folded by the pod")
        assert pod.metrics_json()["reports_refused"] == 1
        sent = await report_outcomes(stack)
        outcomes = sorted((r.status, o) for r, o in sent.items() if r.replica_id == replica_id)
        assert outcomes == [
            ("crashed", "not_found"),
            ("running", "accepted"),
            ("starting", "accepted"),
        ]
        assert replica_id not in pod.replicas
        assert not pod.view.owns(replica_id, replica.assignment.placed_seq)


async def no_refused_reports(stack: Stack, agent_ids: set[str]) -> None:
    """Wait until every report on the log is answered; none about `agent_ids` was refused."""

    async def answered() -> bool:
        return all(o is not None for o in (await report_outcomes(stack)).values())

    await wait_until(answered, 60, "every report answered")
    refused = [
        (report, outcome)
        for report, outcome in (await report_outcomes(stack)).items()
        if report.agent_id in agent_ids and outcome in REFUSING
    ]
    assert refused == []
