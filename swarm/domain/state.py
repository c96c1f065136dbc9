"""The Hive's state: what every replica agrees on, folded from the event log.

Plain mutable dataclasses, because Raft snapshots pickle them and folding must not copy the whole
state per event. Derived numbers (a pod's usage) are kept up to date by `evolve` so that placement
checks are O(1) instead of a scan over every replica.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

from schemas.specs import AccessRole, AgentSpec, AutoscalePolicy, Capacity, Quota
from schemas.status import AgentStatus
from swarm.domain import placement
from swarm.domain.placement import PodStatus, ReplicaKey, ReplicaPhase
from swarm.domain.reputation import Reputation

#: Phases that count towards the desired replica count (what holds resources, and what may run,
#: is `placement.PLACED` and `placement.RUN`).
ACTIVE: frozenset[str] = frozenset({"requested", "scheduled", "starting", "running", "crashed"})

DEFAULT_NAMESPACE = "default"


@dataclass(slots=True)
class Replica:
    replica_id: str
    version: str
    phase: ReplicaPhase = "requested"
    pod_id: str | None = None
    reason: str = ""
    snapshot: str | None = None
    #: Times of recent crashes, for the restart window.
    crashes: list[datetime] = field(default_factory=list)
    restart_at: datetime | None = None
    #: Snapshots this replica had, with when the log said so, oldest first (healing rewinds).
    known_snapshots: list[KnownSnapshot] = field(default_factory=list)


@dataclass(slots=True)
class Rollout:
    version: str
    from_version: str
    max_surge: int
    rollback: bool = False


#: Findings kept per agent in the state (the log has them all).
RECENT_ANOMALIES = 20


@dataclass(slots=True)
class Anomaly:
    anomaly_id: str
    kind: str
    severity: str
    score: float
    at: datetime | None
    replica_id: str | None = None
    window_start: datetime | None = None
    summary: str = ""
    #: The recorded event's id and correlation, so the healing command it causes joins its trace.
    event_id: str | None = None
    correlation: str | None = None
    #: Signals beyond their thresholds in its evidence (two of them confirm a critical finding).
    signals: tuple[str, ...] = ()


# --- healing -------------------------------------------------------------------------------------

#: Snapshots remembered per replica, and healing actions per agent.
KNOWN_SNAPSHOTS = 8
RECENT_ACTIONS = 10


@dataclass(slots=True)
class KnownSnapshot:
    #: None: the replica started from an empty state.
    ref: str | None
    at: datetime


@dataclass(slots=True)
class Quarantine:
    reason: str
    anomaly_id: str | None
    at: datetime


@dataclass(slots=True)
class HealingRecord:
    action: str
    reason: str
    anomaly_id: str | None
    at: datetime
    replica_id: str | None = None


@dataclass(slots=True)
class Agent:
    agent_id: str
    namespace: str
    name: str
    spec: AgentSpec
    replicas_desired: int
    status: AgentStatus = "requested"
    status_reason: str = "deployed"
    #: Every version ever deployed, oldest first, with its spec (for rollback).
    versions: dict[str, AgentSpec] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)
    replicas: dict[str, Replica] = field(default_factory=dict)
    rollout: Rollout | None = None
    next_replica: int = 0
    deleted: bool = False
    ever_running: bool = False
    created_at: datetime | None = None
    #: The most recent Observer findings, oldest first.
    anomalies: list[Anomaly] = field(default_factory=list)
    #: Trust, quarantine and the healing actions taken (see `heal.py`).
    reputation: Reputation = field(default_factory=Reputation)
    quarantine: Quarantine | None = None
    #: Findings recorded at or before this time have been acted upon (or released).
    healed_at: datetime | None = None
    actions: list[HealingRecord] = field(default_factory=list)
    #: When the current version was deployed or rolled out (regressions after a rollout).
    version_since: datetime | None = None
    #: Stream sequence of the last event of this aggregate (for expected-sequence appends).
    last_seq: int = 0
    #: Autoscaling policy (the scheduler's autoscaler acts on it); None: sized by hand.
    autoscale: AutoscalePolicy | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def active(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.phase in ACTIVE]


@dataclass(slots=True)
class Pod:
    pod_id: str
    capacity: Capacity
    labels: dict[str, str]
    zone: str
    energy_cost: float
    lease_s: float
    status: PodStatus = "ready"
    used_memory_mb: int = 0
    used_fuel_per_s: int = 0
    #: (agent_id, replica_id) of every replica holding resources here.
    replicas: set[ReplicaKey] = field(default_factory=set)
    registered_at: datetime | None = None
    last_seq: int = 0
    #: The latest machine-wide findings about this pod (`PodAnomaly`, at most
    #: `RECENT_POD_ANOMALIES`).
    anomalies: list[PodAnomaly] = field(default_factory=list)

    def free(self) -> tuple[int, int, int]:
        """(memory MB, fuel/s, slots) still free."""
        return placement.free(self)


@dataclass(slots=True)
class Usage:
    """What a namespace's agents ask for (desired replicas), kept current by `evolve`."""

    agents: int = 0
    replicas: int = 0
    memory_mb: int = 0
    fuel_per_s: int = 0


@dataclass(slots=True)
class Namespace:
    name: str
    quota: Quota = field(default_factory=Quota)
    usage: Usage = field(default_factory=Usage)
    last_seq: int = 0


# --- webhooks ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Webhook:
    """A subscription; its deliveries are the dispatcher's business, not the Hive's."""

    webhook_id: str
    url: str
    filter: str
    max_attempts: int | None
    secret_fingerprint: str
    description: str = ""
    created_at: datetime | None = None
    #: Stream sequence of the WebhookAdded event: the dispatcher delivers what came after it.
    added_seq: int = 0
    removed: bool = False
    last_seq: int = 0


# --- entries of the log that could not be folded ------------------------------------------------

#: Fold failures kept in the state (the count goes on; the log has every entry).
RECENT_FOLD_FAILURES = 20


@dataclass(frozen=True, slots=True)
class Grant:
    """User `user` holds `role` in `namespace` (None: in every namespace)."""

    user: str
    namespace: str | None
    role: AccessRole


@dataclass(slots=True)
class FoldFailure:
    """An entry of SWARM_EVENTS that changed nothing because it could not be folded.

    The Hive never writes one (it folds what it is about to write first), so each names a foreign
    write or a fault; every replica records the same ones, so replicas stay digest-equal.
    """

    seq: int
    type: str
    reason: str


@dataclass(slots=True)
class HiveState:
    """Everything the Hive decides on. `applied_seq` is the last SWARM_EVENTS sequence folded."""

    applied_seq: int = 0
    namespaces: dict[str, Namespace] = field(
        default_factory=lambda: {DEFAULT_NAMESPACE: Namespace(DEFAULT_NAMESPACE)}
    )
    agents: dict[str, Agent] = field(default_factory=dict)
    #: (namespace, name) -> agent id, for agents that are not deleted.
    by_name: dict[tuple[str, str], str] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)
    #: Webhook subscriptions by webhook id (removed ones stay, marked, as deleted agents do).
    webhooks: dict[str, Webhook] = field(default_factory=dict)
    #: Entries that could not be folded: how many, and the most recent ones.
    fold_failure_count: int = 0
    fold_failures: list[FoldFailure] = field(default_factory=list)
    #: The seal of the last entry the Hive sealed (`swarm.kernel.seal`): what its next one
    #: names as `hiveprev`, so the Hive's entries chain across leaders.
    chain_head: str = ""
    #: What each user may do where (`swarm.domain.policy.check_access`).
    grants: tuple[Grant, ...] = ()
    #: The sequence of the last `access` event about each user (`swarm.evt.access.<user>.*`).
    access_seq: dict[str, int] = field(default_factory=dict)

    def __setstate__(self, state: tuple[Any, dict[str, Any]]) -> None:
        """Load a pickled state (a Raft snapshot): one written by an earlier Swarm lacks the
        fields added since, which then take their defaults."""
        _, saved = state
        fresh = HiveState()
        for f in fields(HiveState):
            setattr(self, f.name, saved[f.name] if f.name in saved else getattr(fresh, f.name))

    def agent_named(self, namespace: str, name: str) -> Agent | None:
        agent_id = self.by_name.get((namespace, name))
        return self.agents.get(agent_id) if agent_id else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view of the whole state (queries, digests, time travel)."""
        view: dict[str, Any] = _jsonable(asdict(self))
        return view

    def digest(self) -> str:
        """sha256 over a canonical rendering: equal on every replica that agrees."""
        return digest_of(self.to_dict())


def digest_of(view: dict[str, Any]) -> str:
    """`HiveState.digest()` of the state whose `to_dict()` is `view` (building the view of a
    large state costs seconds; time travel has it already)."""
    text = json.dumps(view, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {_key(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v) for v in value), key=json.dumps)
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


def _key(key: Any) -> str:
    return "/".join(key) if isinstance(key, tuple) else str(key)


#: Machine-wide findings kept per pod.
RECENT_POD_ANOMALIES = 5


@dataclass(slots=True)
class PodAnomaly:
    """A machine-wide finding recorded on a pod (`swarm.pod.anomaly_detected`): many agents on
    it (or across the cluster) deviated together. Never acted on by healing."""

    anomaly_id: str
    scope: str
    kind: str
    severity: str
    at: datetime | None
    window_start: datetime
    window_end: datetime
    pods: list[str]
    #: Agents that deviated (per signal, the largest count) and agent findings withheld.
    agents: int
    withheld: int
    summary: str
