"""Steps on an in-memory Hive (`tests.helpers.sim.Sim`) that many rule tests share: register a pod,
deploy an agent, and play the scheduler and the pods for every replica at once."""

from __future__ import annotations

import base64

from schemas import commands as c
from schemas.specs import AgentSpec, Capacity, ModuleRef, Resources
from tests.helpers.sim import Sim

WASM = base64.b64encode(b"\0asm\1\0\0\0").decode()


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


def place_all(sim: Sim, pod_id: str) -> None:
    for agent in sim.state.agents.values():
        for r in agent.replicas.values():
            if r.phase == "requested":
                sim.ok(
                    c.ProposePlacement(
                        agent_id=agent.agent_id,
                        replica_id=r.replica_id,
                        pod_id=pod_id,
                        policy="test",
                    ),
                    "service:scheduler",
                )


def run_all(sim: Sim) -> None:
    for agent in list(sim.state.agents.values()):
        for r in list(agent.replicas.values()):
            if r.phase in ("scheduled", "starting") and r.pod_id:
                sim.ok(
                    c.ReportReplica(
                        agent_id=agent.agent_id,
                        replica_id=r.replica_id,
                        pod_id=r.pod_id,
                        status="running",
                    ),
                    f"pod:{r.pod_id}",
                )


def stop_all(sim: Sim) -> None:
    for agent in list(sim.state.agents.values()):
        for r in list(agent.replicas.values()):
            if r.phase == "stopping" and r.pod_id:
                sim.ok(
                    c.ReportReplica(
                        agent_id=agent.agent_id,
                        replica_id=r.replica_id,
                        pod_id=r.pod_id,
                        status="stopped",
                    ),
                    f"pod:{r.pod_id}",
                )


def deploy(sim: Sim, name: str = "echo", replicas: int = 2, **kw: object) -> str:
    sim.ok(c.DeployAgent(name=name, spec=spec(**kw), replicas=replicas))  # type: ignore[arg-type]
    agent = sim.state.agent_named("default", name)
    assert agent is not None
    return agent.agent_id
