"""The pod's projection of SWARM_EVENTS: agents' specs per version and where replicas are placed.

Pure and deterministic like the scheduler's view: `fold(envelope, seq)` looks only at its
arguments (and at the reports the pod said it sent, `watch`) and is idempotent by stream
sequence. The pod compares `wanted()` and `stopping()` with what it runs. Which phases run and
hold a place, a replica's spec (its version's, else the current one) and what `replica_stopping`
means are the Hive's rules, imported from `swarm/domain/placement.py`; this view keeps what a
pod needs to run its replicas (whole specs, snapshots, causes), not the pods' accounting.

Each placement is identified by the sequence of its `replica_scheduled` event (`placed_seq`): a
replica that crashed and was placed here again is a new placement, even when the crash, the new
request and the new placement are folded in one batch and the phase looks unchanged.

What the pod may report: `owns(replica, placement)` is true while the view says the Hive still
holds that placement on this pod, so the pod drops a report about a replica the log deleted,
stopped or moved (the Hive would refuse it). The view can lag the Hive (a report may be in
flight while a deletion is decided), so the pod `watch`es the reports it sends, and a refusal
folded from the log (`command.rejected` with rule `not_found` or `not_assigned`) disowns that
placement for good: it is no longer wanted, stopping or owned, so the pod stops it without a
word.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas import Envelope, events, healing, market, outcomes
from schemas.specs import AgentSpec
from swarm.domain import placement, policy
from swarm.domain.dispatch import HandlerTable, unseen
from swarm.domain.placement import RUN, ReplicaPhase
from swarm.domain.state import Grant

#: Rules of the Hive's refusals of a report that mean "this replica is not yours (any more)".
DISOWNING_RULES: frozenset[str] = frozenset({"not_found", "not_assigned"})
#: Reports in flight the view remembers, waiting for a refusal (accepted ones are never folded,
#: so the oldest are forgotten: a refusal is folded within moments of the report, or never).
MAX_WATCHED = 4096


@dataclass(slots=True)
class AgentInfo:
    agent_id: str
    namespace: str
    name: str
    current: str
    specs: dict[str, AgentSpec]
    deleted: bool = False
    #: The newest snapshot a replica of this agent stopped with: a replica added later (stop,
    #: then scale up) starts from it, since new replicas get new ids and no snapshot of their own.
    last_stopped_snapshot: str | None = None
    #: Why the agent is quarantined (its replicas refuse messages), None when it is not.
    quarantine: str | None = None


@dataclass(slots=True)
class ReplicaInfo:
    agent_id: str
    replica_id: str
    version: str
    phase: ReplicaPhase = "requested"
    pod_id: str | None = None
    snapshot: str | None = None
    placed_seq: int = 0
    #: The placement (`placed_seq`) a preemption moved it off: the pod saves a last snapshot
    #: of that placement when it stops it (a plain move after a lost pod saves nothing).
    preempted_seq: int = 0
    restore: str = "latest"
    restore_before: datetime | None = None
    #: (event id, correlation id) of its placement, so the pod's reports join that trace.
    cause: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Assignment:
    """A replica placed on this pod, with everything needed to run it."""

    agent_id: str
    replica_id: str
    namespace: str
    name: str
    spec: AgentSpec
    #: Snapshot the log says it resumes from; else the agent's last stopped one.
    snapshot: str | None
    placed_seq: int
    #: A healing rewind: resume from the newest state saved before `restore_before`, else from
    #: exactly `snapshot`; never from the newest (possibly bad) state.
    exact: bool = False
    restore_before: datetime | None = None
    #: (event id, correlation id) of the placement; the pod's reports are caused by it.
    cause: tuple[str, str] | None = None


@dataclass(slots=True)
class PodView:
    pod_id: str
    applied_seq: int = 0
    agents: dict[str, AgentInfo] = field(default_factory=dict)
    #: By replica id; ids are `<agent id>-<n>`, so unique across agents.
    replicas: dict[str, ReplicaInfo] = field(default_factory=dict)
    #: Sequence of the last `pod_lost` about this pod (the pod registers again when it sees one).
    lost_seq: int = 0
    #: Command id of a report in flight -> (replica id, placement) it is about.
    watched: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: Replica id -> the placement the Hive refused a report about: never run, never reported.
    disowned: dict[str, int] = field(default_factory=dict)
    #: Reports the Hive refused as about a replica that is not this pod's.
    refusals: int = 0
    #: Who holds which role where (the Hive's `HiveState.grants`, folded by the same rule):
    #: whom the mesh guard lets message which agents.
    grants: tuple[Grant, ...] = ()

    def fold(self, envelope: Envelope[Any], seq: int) -> None:
        if not unseen(self, seq):
            return
        handler = _HANDLERS.get(type(envelope.data))
        if handler is not None:
            handler(self, envelope.data, seq)
        if isinstance(envelope.data, events.ReplicaScheduled):
            placed = self.replicas.get(envelope.data.replica_id)
            if placed is not None:
                placed.cause = (envelope.id, envelope.correlationid or envelope.id)

    def advance(self, seq: int) -> None:
        """Skip a message that could not be read (it must not stall the projection)."""
        self.applied_seq = max(self.applied_seq, seq)

    def wanted(self) -> dict[str, Assignment]:
        """Replicas that should run on this pod."""
        return self._mine(RUN)

    def stopping(self) -> dict[str, Assignment]:
        """Replicas of this pod the Hive asked to stop (the pod answers with `stopped`)."""
        return self._mine(frozenset({"stopping"}))

    def owns(self, replica_id: str, placed_seq: int) -> bool:
        """True while, as far as the log has been read, the Hive holds that placement of the
        replica on this pod: a report about it will not be refused as `not_found` or
        `not_assigned`. False once the agent is forgotten, the replica stopped, failed, moved or
        placed again, or a report about the placement was refused."""
        r = self.replicas.get(replica_id)
        return (
            r is not None
            and r.pod_id == self.pod_id
            and r.placed_seq == placed_seq
            and r.agent_id in self.agents
            and self.disowned.get(replica_id) != placed_seq
        )

    def gone(self, agent_id: str) -> bool:
        """True when the agent is deleted (or was never seen): its replicas stop at once."""
        agent = self.agents.get(agent_id)
        return agent is None or agent.deleted

    def watch(self, command_id: str, replica_id: str, placed_seq: int) -> None:
        """Remember a report about to be sent, so a refusal of it disowns the placement."""
        self.watched[command_id] = (replica_id, placed_seq)
        while len(self.watched) > MAX_WATCHED:
            del self.watched[next(iter(self.watched))]

    def _mine(self, phases: frozenset[str]) -> dict[str, Assignment]:
        out: dict[str, Assignment] = {}
        for r in self.replicas.values():
            agent = self.agents.get(r.agent_id)
            if r.pod_id != self.pod_id or r.phase not in phases or agent is None:
                continue
            if self.disowned.get(r.replica_id) == r.placed_seq:
                continue
            out[r.replica_id] = Assignment(
                agent_id=r.agent_id,
                replica_id=r.replica_id,
                namespace=agent.namespace,
                name=agent.name,
                spec=placement.size_of(agent.specs, r.version, agent.specs[agent.current]),
                snapshot=(
                    r.snapshot
                    if r.restore == "exact"
                    else r.snapshot or agent.last_stopped_snapshot
                ),
                placed_seq=r.placed_seq,
                exact=r.restore == "exact",
                restore_before=r.restore_before if r.restore == "exact" else None,
                cause=r.cause,
            )
        return out

    def preempted(self, replica_id: str, placed_seq: int) -> bool:
        """True when that placement of the replica was preempted (save it as it stops)."""
        replica = self.replicas.get(replica_id)
        return replica is not None and placed_seq > 0 and replica.preempted_seq == placed_seq

    def _forget(self, replica: ReplicaInfo) -> None:
        self.replicas.pop(replica.replica_id, None)
        self.disowned.pop(replica.replica_id, None)
        agent = self.agents.get(replica.agent_id)
        if (
            agent is not None
            and agent.deleted
            and not any(r.agent_id == agent.agent_id for r in self.replicas.values())
        ):
            del self.agents[agent.agent_id]


Handler = Callable[[PodView, Any, int], None]
_HANDLERS: HandlerTable[Handler] = HandlerTable()
_on = _HANDLERS.on


@_on(events.AccessGranted)
def _granted(v: PodView, e: events.AccessGranted, seq: int) -> None:
    v.grants = policy.granted(v.grants, e)


@_on(events.AccessRevoked)
def _revoked(v: PodView, e: events.AccessRevoked, seq: int) -> None:
    v.grants = policy.revoked(v.grants, e.user, e.namespace)


@_on(events.AgentDeployed)
def _deployed(v: PodView, e: events.AgentDeployed, seq: int) -> None:
    v.agents[e.agent_id] = AgentInfo(
        e.agent_id, e.namespace, e.name, e.spec.version, {e.spec.version: e.spec}
    )


@_on(events.AgentRolloutStarted)
def _rollout(v: PodView, e: events.AgentRolloutStarted, seq: int) -> None:
    agent = v.agents.get(e.agent_id)
    if agent is not None:
        agent.specs[e.spec.version] = e.spec
        agent.current = e.spec.version


@_on(events.AgentDeleted)
def _deleted(v: PodView, e: events.AgentDeleted, seq: int) -> None:
    agent = v.agents.get(e.agent_id)
    if agent is None:
        return
    agent.deleted = True
    if not any(r.agent_id == e.agent_id for r in v.replicas.values()):
        del v.agents[e.agent_id]


@_on(events.ReplicaRequested)
def _requested(v: PodView, e: events.ReplicaRequested, seq: int) -> None:
    if e.agent_id not in v.agents:
        return
    replica = v.replicas.setdefault(e.replica_id, ReplicaInfo(e.agent_id, e.replica_id, e.version))
    replica.phase, replica.version, replica.pod_id = "requested", e.version, None
    replica.snapshot = e.snapshot
    replica.restore = e.restore
    replica.restore_before = e.before


@_on(events.ReplicaScheduled)
def _scheduled(v: PodView, e: events.ReplicaScheduled, seq: int) -> None:
    replica = v.replicas.get(e.replica_id)
    if replica is not None:
        replica.phase, replica.pod_id, replica.placed_seq = "scheduled", e.pod_id, seq


def _reported(v: PodView, replica_id: str, phase: ReplicaPhase, snapshot: str | None) -> None:
    """A replica the view knows reported `phase`, with the snapshot it names (if it names one)."""
    replica = v.replicas.get(replica_id)
    if replica is not None:
        replica.phase = phase
        if snapshot is not None:
            replica.snapshot = snapshot


@_on(events.ReplicaStarting)
def _starting(v: PodView, e: events.ReplicaStarting, seq: int) -> None:
    _reported(v, e.replica_id, "starting", e.snapshot)


@_on(events.ReplicaRunning)
def _running(v: PodView, e: events.ReplicaRunning, seq: int) -> None:
    _reported(v, e.replica_id, "running", None)


@_on(events.ReplicaCrashed)
def _crashed(v: PodView, e: events.ReplicaCrashed, seq: int) -> None:
    _reported(v, e.replica_id, "crashed", e.snapshot)


@_on(events.ReplicaFailed)
def _failed(v: PodView, e: events.ReplicaFailed, seq: int) -> None:
    replica = v.replicas.get(e.replica_id)
    if replica is not None:
        v._forget(replica)


@_on(events.ReplicaStopping)
def _stopping(v: PodView, e: events.ReplicaStopping, seq: int) -> None:
    replica = v.replicas.get(e.replica_id)
    if replica is None:
        return
    if placement.stopping_phase(replica.phase) == "stopping":
        replica.phase = "stopping"
    else:  # never placed, or crashed and waiting: stopped at once, so forgotten
        v._forget(replica)


@_on(events.ReplicaStopped)
def _stopped(v: PodView, e: events.ReplicaStopped, seq: int) -> None:
    replica = v.replicas.get(e.replica_id)
    agent = v.agents.get(e.agent_id)
    snapshot = e.snapshot or (replica.snapshot if replica else None)
    if agent is not None and snapshot is not None:
        agent.last_stopped_snapshot = snapshot
    if replica is not None:
        v._forget(replica)


@_on(events.PodLost)
def _lost(v: PodView, e: events.PodLost, seq: int) -> None:
    if e.pod_id == v.pod_id:
        v.lost_seq = seq


@_on(market.ReplicaPreempted)
def _preempted(v: PodView, e: market.ReplicaPreempted, seq: int) -> None:
    replica = v.replicas.get(e.replica_id)
    if replica is not None and replica.pod_id == e.pod_id:
        replica.preempted_seq = replica.placed_seq


def quarantine_of(view: PodView, agent_id: str) -> str | None:
    """Why the agent's replicas must refuse messages now, or None."""
    agent = view.agents.get(agent_id)
    return agent.quarantine if agent is not None else None


@_on(healing.AgentQuarantined)
def _quarantined(v: PodView, e: healing.AgentQuarantined, seq: int) -> None:
    agent = v.agents.get(e.agent_id)
    if agent is not None:
        agent.quarantine = e.reason


@_on(healing.AgentReleased)
def _released(v: PodView, e: healing.AgentReleased, seq: int) -> None:
    agent = v.agents.get(e.agent_id)
    if agent is not None:
        agent.quarantine = None


@_on(outcomes.CommandRejected)
def _rejected(v: PodView, e: outcomes.CommandRejected, seq: int) -> None:
    about = v.watched.pop(e.command_id, None)
    if about is None or e.rule not in DISOWNING_RULES:
        return
    v.refusals += 1
    replica_id, placed_seq = about
    if replica_id in v.replicas:  # else the view forgot it already (and so will the pod)
        v.disowned[replica_id] = placed_seq


#: Payload types that change the view; anything else only advances `applied_seq`.
HANDLED: frozenset[type[Any]] = frozenset(_HANDLERS)
