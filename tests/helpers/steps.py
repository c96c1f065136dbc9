"""Steps on an in-memory Hive (`tests.helpers.sim.Sim`) that many rule tests share: register a pod,
deploy an agent, and play the scheduler and the pods for every replica at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from schemas import Payload
from schemas import commands as c
from schemas.specs import AgentSpec, Capacity, ModuleRef, Resources
from swarm.domain.state import HiveState
from tests.helpers.history import WASM
from tests.helpers.sim import Sim


def spec(version: str = "v1", memory: int = 64, **kw: object) -> AgentSpec:
    return AgentSpec(
        version=version, module=ModuleRef(inline=WASM), resources=Resources(memory_mb=memory), **kw
    )  # type: ignore[arg-type]


def pod(sim: Sim, pod_id: str, memory: int = 1024, slots: int = 100) -> None:
    sim.ok(
        c.RegisterPod(
            pod_id=pod_id, capacity=Capacity(memory_mb=memory, fuel_per_s=10**12, slots=slots)
        ),
        f"pod:{pod_id}",
    )


def placements(state: HiveState, pod_id: str) -> Iterator[tuple[c.ProposePlacement, str]]:
    """The scheduler's proposal to place each waiting replica (of an agent not deleted) on
    `pod_id`, with the scheduler's identity; read lazily, like `pod_reports`."""
    for agent in list(state.agents.values()):
        for r in list(agent.replicas.values()):
            if r.phase == "requested" and not agent.deleted:
                proposal = c.ProposePlacement(
                    agent_id=agent.agent_id, replica_id=r.replica_id, pod_id=pod_id, policy="test"
                )
                yield proposal, "service:scheduler"


def place_all(sim: Sim, pod_id: str) -> None:
    for proposal, identity in placements(sim.state, pod_id):
        sim.ok(proposal, identity)


def pod_reports(
    state: HiveState, status: c.ReplicaStatus, phases: tuple[str, ...]
) -> Iterator[tuple[c.ReportReplica, str]]:
    """A report of `status` for each replica in one of `phases` on a pod, with the identity of
    the pod that sends it. Each replica's phase is read when its report is due, so a report sent
    before it (that moved the replica on) is seen."""
    for agent in list(state.agents.values()):
        for r in list(agent.replicas.values()):
            if r.phase in phases and r.pod_id:
                report = c.ReportReplica(
                    agent_id=agent.agent_id, replica_id=r.replica_id, pod_id=r.pod_id, status=status
                )
                yield report, f"pod:{r.pod_id}"


def report_replica(
    sim: Sim,
    agent_id: str,
    replica_id: str,
    status: c.ReplicaStatus,
    *,
    pod_id: str = "p1",
    **fields: Any,
) -> list[Payload]:
    """Pod `pod_id` reports one replica's `status` (with `fields`: reason, snapshot...), which
    the Hive accepts; the events it decided."""
    report = c.ReportReplica(
        agent_id=agent_id, replica_id=replica_id, pod_id=pod_id, status=status, **fields
    )
    return sim.ok(report, f"pod:{pod_id}")


def run_all(sim: Sim) -> None:
    for report, identity in pod_reports(sim.state, "running", ("scheduled", "starting")):
        sim.ok(report, identity)


def stop_all(sim: Sim) -> None:
    for report, identity in pod_reports(sim.state, "stopped", ("stopping",)):
        sim.ok(report, identity)


def deploy(sim: Sim, name: str = "echo", replicas: int = 2, **kw: object) -> str:
    sim.ok(c.DeployAgent(name=name, spec=spec(**kw), replicas=replicas))  # type: ignore[arg-type]
    agent = sim.state.agent_named("default", name)
    assert agent is not None
    return agent.agent_id


def deploy_running(sim: Sim, name: str = "echo", replicas: int = 2, **kw: object) -> str:
    """Pod p1, and an agent deployed with every replica placed on it and running; its id."""
    pod(sim, "p1")
    agent_id = deploy(sim, name, replicas, **kw)
    place_all(sim, "p1")
    run_all(sim)
    return agent_id
