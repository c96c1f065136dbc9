"""The scheduler's projection of SWARM_EVENTS: pods, what holds resources on them, and which
replicas wait for a placement.

The Hive re-checks every proposal against its own accounting (`swarm/domain/evolve.py`), so a
view that counted differently would keep proposing placements the Hive refuses. The rules of
that accounting (which phases hold resources, a replica's size, a pod's free capacity, what
`replica_requested` for a placed replica and `replica_stopping` mean, pod status) are the
domain's (`swarm/domain/placement.py`), imported here; this view keeps only what the scheduler
places on (sizes and bids instead of whole specs, the requests waiting).

`tests/scheduler/test_view.py` and `tests/domain/` fold the same histories into both and compare
the numbers.

Pure and deterministic: `fold(envelope, seq)` only looks at its arguments, and is idempotent by
stream sequence like the Hive's `evolve`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas import Envelope, events
from schemas.specs import AgentSpec, Capacity
from swarm.domain import placement
from swarm.domain.dispatch import HandlerTable, unseen
from swarm.domain.placement import PLACED, TERMINAL, PodStatus, ReplicaKey, ReplicaPhase


@dataclass(frozen=True, slots=True)
class Demand:
    """What one replica of one agent version reserves on the pod that runs it."""

    memory_mb: int
    fuel_per_s: int
    priority: int = 0
    #: The market bid and constraints (`AgentSpec.placement`).
    max_price: float | None = None
    node_selector: tuple[tuple[str, str], ...] = ()
    zones: tuple[str, ...] = ()
    avoid_zones: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: AgentSpec) -> Demand:
        # Only the numbers are kept: a spec may carry an inline module of up to 256 KB.
        placement = spec.placement
        return cls(
            spec.resources.memory_mb,
            spec.resources.fuel_per_s,
            spec.effective_priority,
            placement.max_price,
            tuple(sorted(placement.node_selector.items())),
            tuple(placement.zones),
            tuple(placement.avoid_zones),
        )


@dataclass(frozen=True, slots=True)
class Request:
    """One request to place a replica, identified by the sequence of its `replica_requested`."""

    key: ReplicaKey
    seq: int


@dataclass(slots=True)
class PodView:
    pod_id: str
    capacity: Capacity
    zone: str
    labels: dict[str, str]
    energy_cost: float
    status: PodStatus = "ready"
    used_memory_mb: int = 0
    used_fuel_per_s: int = 0
    replicas: set[ReplicaKey] = field(default_factory=set)

    def free(self) -> tuple[int, int, int]:
        """(memory MB, fuel/s, slots) still free, counted as the Hive counts them."""
        return placement.free(self)


@dataclass(slots=True)
class ReplicaView:
    replica_id: str
    version: str
    phase: ReplicaPhase = "requested"
    pod_id: str | None = None
    #: Sequence of its last `replica_scheduled`: larger means started more recently.
    placed_seq: int = 0


@dataclass(slots=True)
class AgentView:
    agent_id: str
    current: Demand
    versions: dict[str, Demand]
    deleted: bool = False
    replicas: dict[str, ReplicaView] = field(default_factory=dict)

    def demand_of(self, replica: ReplicaView) -> Demand:
        return placement.size_of(self.versions, replica.version, self.current)


@dataclass(slots=True)
class ClusterView:
    """Everything the scheduler places on. `applied_seq` is the last SWARM_EVENTS seq folded."""

    applied_seq: int = 0
    pods: dict[str, PodView] = field(default_factory=dict)
    agents: dict[str, AgentView] = field(default_factory=dict)
    #: Replicas waiting for a placement -> sequence of their request, oldest request first.
    waiting: dict[ReplicaKey, int] = field(default_factory=dict)
    #: The same, by request sequence: a proposal's id names the request it answers.
    requests: dict[int, ReplicaKey] = field(default_factory=dict)
    #: Request sequence -> (event id, correlation id) of the request, so that a proposal is
    #: linked to what caused it and `swarm timeline --correlation` shows the whole chain.
    causes: dict[int, tuple[str, str]] = field(default_factory=dict)

    def fold(self, envelope: Envelope[Any], seq: int) -> list[Request]:
        """Apply the event stored at `seq`; returns the requests it ended (placed, stopped, ...).

        Events the scheduler does not need (outcomes, statuses, later Swarm versions' events)
        only advance `applied_seq`.
        """
        handler = _HANDLERS.get(type(envelope.data))
        if not unseen(self, seq) or handler is None:
            return []
        ended: list[Request] = []
        handler(self, envelope.data, seq, ended)
        if seq in self.requests:
            self.causes[seq] = (envelope.id, envelope.correlationid or envelope.id)
        return ended

    def advance(self, seq: int) -> None:
        """Skip a message that could not be read (it must not stall the projection)."""
        self.applied_seq = max(self.applied_seq, seq)

    def demand(self, key: ReplicaKey) -> Demand:
        agent = self.agents[key[0]]
        return agent.demand_of(agent.replicas[key[1]])

    # -- bookkeeping shared by the handlers -------------------------------------------------------

    def _wait(self, key: ReplicaKey, seq: int, ended: list[Request]) -> None:
        self._unwait(key, ended)
        self.waiting[key] = seq
        self.requests[seq] = key

    def _unwait(self, key: ReplicaKey, ended: list[Request]) -> None:
        seq = self.waiting.pop(key, None)
        if seq is not None:
            del self.requests[seq]
            self.causes.pop(seq, None)
            ended.append(Request(key, seq))

    def _release(self, agent: AgentView, replica: ReplicaView) -> None:
        """Give the replica's reservation back to its pod (the Hive's `_release`)."""
        if replica.pod_id is None or replica.phase not in PLACED:
            return
        pod = self.pods.get(replica.pod_id)
        if pod is not None:
            placement.release(pod, (agent.agent_id, replica.replica_id), agent.demand_of(replica))

    def _move(
        self, agent: AgentView, replica: ReplicaView, phase: ReplicaPhase, ended: list[Request]
    ) -> None:
        if phase not in PLACED:
            self._release(agent, replica)
        replica.phase = phase
        if phase != "requested":
            self._unwait((agent.agent_id, replica.replica_id), ended)

    def _forget_if_gone(self, agent: AgentView) -> None:
        """Terminal replicas are never placed again; dropping them keeps the view small."""
        for replica_id in [r.replica_id for r in agent.replicas.values() if r.phase in TERMINAL]:
            del agent.replicas[replica_id]
        if agent.deleted and not agent.replicas:
            del self.agents[agent.agent_id]


Handler = Callable[[ClusterView, Any, int, list[Request]], None]
_HANDLERS: HandlerTable[Handler] = HandlerTable()
_on = _HANDLERS.on


def _replica(
    v: ClusterView, agent_id: str, replica_id: str
) -> tuple[AgentView, ReplicaView] | None:
    """The agent and replica an event is about; None for ones the view never saw or forgot."""
    agent = v.agents.get(agent_id)
    replica = agent.replicas.get(replica_id) if agent else None
    return (agent, replica) if agent is not None and replica is not None else None


# --- agents --------------------------------------------------------------------------------------


@_on(events.AgentDeployed)
def _deployed(v: ClusterView, e: events.AgentDeployed, seq: int, ended: list[Request]) -> None:
    demand = Demand.of(e.spec)
    v.agents[e.agent_id] = AgentView(e.agent_id, demand, {e.spec.version: demand})


@_on(events.AgentRolloutStarted)
def _rollout(v: ClusterView, e: events.AgentRolloutStarted, seq: int, ended: list[Request]) -> None:
    agent = v.agents.get(e.agent_id)
    if agent is not None:
        agent.current = agent.versions[e.spec.version] = Demand.of(e.spec)


@_on(events.AgentDeleted)
def _deleted(v: ClusterView, e: events.AgentDeleted, seq: int, ended: list[Request]) -> None:
    agent = v.agents.get(e.agent_id)
    if agent is None:
        return
    agent.deleted = True
    # The Hive stops every replica before deleting an agent; nothing of it may wait any more.
    for replica_id in agent.replicas:
        v._unwait((agent.agent_id, replica_id), ended)
    v._forget_if_gone(agent)


# --- replicas ------------------------------------------------------------------------------------


@_on(events.ReplicaRequested)
def _requested(v: ClusterView, e: events.ReplicaRequested, seq: int, ended: list[Request]) -> None:
    agent = v.agents.get(e.agent_id)
    if agent is None:
        return
    replica = agent.replicas.get(e.replica_id)
    if replica is None:
        replica = agent.replicas[e.replica_id] = ReplicaView(e.replica_id, e.version)
    v._move(agent, replica, "requested", ended)
    replica.version = e.version
    replica.pod_id = None
    if not agent.deleted:
        v._wait((agent.agent_id, replica.replica_id), seq, ended)


@_on(events.ReplicaScheduled)
def _scheduled(v: ClusterView, e: events.ReplicaScheduled, seq: int, ended: list[Request]) -> None:
    found = _replica(v, e.agent_id, e.replica_id)
    pod = v.pods.get(e.pod_id)
    if found is None or pod is None:
        return
    agent, replica = found
    v._move(agent, replica, "scheduled", ended)
    replica.pod_id = e.pod_id
    replica.placed_seq = seq
    placement.reserve(pod, (agent.agent_id, replica.replica_id), agent.demand_of(replica))


@_on(events.ReplicaStarting)
def _starting(v: ClusterView, e: events.ReplicaStarting, seq: int, ended: list[Request]) -> None:
    found = _replica(v, e.agent_id, e.replica_id)
    if found is not None:
        found[1].phase = "starting"


@_on(events.ReplicaRunning)
def _running(v: ClusterView, e: events.ReplicaRunning, seq: int, ended: list[Request]) -> None:
    found = _replica(v, e.agent_id, e.replica_id)
    if found is not None:
        found[1].phase = "running"


def _moves_to(phase: ReplicaPhase, *, forget: bool) -> Handler:
    """The handler of an event that moves the replica it names to `phase`; with `forget`, the
    agent's terminal replicas are dropped after it."""

    def move(v: ClusterView, e: Any, seq: int, ended: list[Request]) -> None:
        found = _replica(v, e.agent_id, e.replica_id)
        if found is not None:
            v._move(*found, phase, ended)
            if forget:
                v._forget_if_gone(found[0])

    return move


_on(events.ReplicaCrashed)(_moves_to("crashed", forget=False))
_on(events.ReplicaFailed)(_moves_to("failed", forget=True))
_on(events.ReplicaStopped)(_moves_to("stopped", forget=True))


@_on(events.ReplicaStopping)
def _stopping(v: ClusterView, e: events.ReplicaStopping, seq: int, ended: list[Request]) -> None:
    found = _replica(v, e.agent_id, e.replica_id)
    if found is None:
        return
    agent, replica = found
    v._move(agent, replica, placement.stopping_phase(replica.phase), ended)
    v._forget_if_gone(agent)


# --- pods ----------------------------------------------------------------------------------------


@_on(events.PodRegistered)
def _registered(v: ClusterView, e: events.PodRegistered, seq: int, ended: list[Request]) -> None:
    pod = v.pods.get(e.pod_id)
    if pod is None:
        v.pods[e.pod_id] = PodView(
            e.pod_id, e.capacity, zone=e.zone, labels=dict(e.labels), energy_cost=e.energy_cost
        )
        return
    # Re-registration keeps what the pod holds: its replicas were not moved.
    pod.capacity = e.capacity
    pod.zone = e.zone
    pod.labels = dict(e.labels)
    pod.energy_cost = e.energy_cost
    pod.status = "ready"


@_on(events.PodLost)
def _lost(v: ClusterView, e: events.PodLost, seq: int, ended: list[Request]) -> None:
    pod = v.pods.get(e.pod_id)
    if pod is not None:
        pod.status = "lost"


#: Payload types that change the view; anything else on the log only advances `applied_seq`.
HANDLED: frozenset[type[Any]] = frozenset(_HANDLERS)
