"""A synthetic SWARM_EVENTS history, folded into a `Planner` as the service would fold the log."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from schemas import CommandRejected, Payload, commands, event, events, names
from schemas.specs import AgentSpec, Capacity, ModuleRef, Resources
from services.scheduler.planner import Planner, Retry
from services.scheduler.policies import MostFreeCapacity
from swarm.kernel.ids import IdKey

WASM = base64.b64encode(b"\0asm\1\0\0\0").decode()
#: The scheduler's id key in these histories: a restarted planner must derive the same ids.
IDS = IdKey.from_secret("history-secret-0123", "scheduler")


def spec(version: str = "v1", memory: int = 64, fuel: int = 1_000) -> AgentSpec:
    return AgentSpec(
        version=version,
        module=ModuleRef(inline=WASM),
        resources=Resources(memory_mb=memory, fuel_per_s=fuel),
    )


@dataclass
class History:
    planner: Planner = field(default_factory=lambda: Planner(MostFreeCapacity(), ids=IDS))
    seq: int = 0
    now: float = 100.0
    log: list[tuple[Payload, str, int]] = field(default_factory=list)

    def emit(self, payload: Payload, aggregate_id: str | None = None) -> int:
        aggregate = payload.TYPE.split(".")[1]
        agg_id = aggregate_id or str(getattr(payload, names.AGGREGATE_ID_FIELDS[aggregate]))
        self.seq += 1
        self.log.append((payload, agg_id, self.seq))
        self.planner.apply(event(payload, aggregate_id=agg_id, source="test"), self.seq, self.now)
        return self.seq

    def replay_into(self, planner: Planner) -> Planner:
        """Fold everything emitted so far into another planner (a restarted scheduler)."""
        for payload, agg_id, seq in self.log:
            planner.apply(event(payload, aggregate_id=agg_id, source="test"), seq, self.now)
        return planner

    # -- pods -------------------------------------------------------------------------------------

    def pod(self, pod_id: str, memory: int = 1024, slots: int = 100, fuel: int = 10**9) -> None:
        self.emit(
            events.PodRegistered(
                pod_id=pod_id,
                capacity=Capacity(memory_mb=memory, fuel_per_s=fuel, slots=slots),
                zone="default",
                energy_cost=1.0,
                lease_s=10.0,
            )
        )

    def lost(self, pod_id: str) -> None:
        self.emit(events.PodLost(pod_id=pod_id, reason="lease expired"))

    # -- agents and replicas ----------------------------------------------------------------------

    def deploy(
        self, agent_id: str, replicas: int = 1, memory: int = 64, fuel: int = 1_000
    ) -> list[str]:
        self.emit(
            events.AgentDeployed(
                agent_id=agent_id,
                namespace="default",
                name=agent_id.lower(),
                spec=spec(memory=memory, fuel=fuel),
                replicas=replicas,
            )
        )
        ids = [f"{agent_id}-{i}" for i in range(replicas)]
        for replica_id in ids:
            self.requested(agent_id, replica_id)
        return ids

    def requested(self, agent_id: str, replica_id: str, version: str = "v1") -> int:
        return self.emit(
            events.ReplicaRequested(
                agent_id=agent_id, replica_id=replica_id, version=version, reason="test"
            )
        )

    def scheduled(self, agent_id: str, replica_id: str, pod_id: str) -> None:
        self.emit(
            events.ReplicaScheduled(
                agent_id=agent_id, replica_id=replica_id, pod_id=pod_id, policy="t", reason="t"
            )
        )

    def stopping(self, agent_id: str, replica_id: str) -> None:
        self.emit(events.ReplicaStopping(agent_id=agent_id, replica_id=replica_id, reason="t"))

    def stopped(self, agent_id: str, replica_id: str) -> None:
        self.emit(events.ReplicaStopped(agent_id=agent_id, replica_id=replica_id, reason="t"))

    # -- outcomes ---------------------------------------------------------------------------------

    def rejected(self, command_id: str, rule: str = "capacity") -> Retry | None:
        self.seq += 1
        payload = CommandRejected(
            command_id=command_id,
            command_type=commands.ProposePlacement.TYPE,
            reason="refused",
            rule=rule,
        )
        self.log.append((payload, command_id, self.seq))
        return self.planner.apply(
            event(payload, aggregate_id=command_id, source="test"), self.seq, self.now
        )

    def accept(self) -> None:
        """Play the Hive: commit every proposal in flight as proposed."""
        for p in list(self.planner.in_flight):
            self.scheduled(p.agent_id, p.replica_id, p.pod_id)
