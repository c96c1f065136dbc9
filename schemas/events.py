"""Events: what happened, in the past tense, on `swarm.evt.<aggregate>.<id>.<event>`.

Only the Hive writes these. Replicas of an agent are part of the agent aggregate (their events
are on the agent's subjects), so one expected-sequence check covers an agent and its replicas.

An event carries the bounds of the command it comes from, and none tighter than what the Hive
derives from a valid command (reasons quote a command's reason, counters count crashes), so
every event the Hive can write decodes again and can be folded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas import names
from schemas.envelope import Payload
from schemas.registry import REGISTRY
from schemas.specs import (
    MAX_INT64,
    MAX_RESTARTS,
    AccessRole,
    AgentSpec,
    AutoscaleDecision,
    AutoscalePolicy,
    Capacity,
    EnergyCost,
    Id,
    Labels,
    LeaseSeconds,
    Name,
    PolicyName,
    Quota,
    Reason,
    Replicas,
    SnapshotRef,
    Surge,
    Version,
    Zone,
)
from schemas.status import AgentStatus

# --- namespaces ----------------------------------------------------------------------------------


@REGISTRY.event("namespace", "created")
class NamespaceCreated(Payload):
    name: Name
    quota: Quota


@REGISTRY.event("namespace", "updated")
class NamespaceUpdated(Payload):
    name: Name
    quota: Quota


# --- access --------------------------------------------------------------------------------------


@REGISTRY.event("access", "granted")
class AccessGranted(Payload):
    user: Id
    role: AccessRole
    #: None: every namespace.
    namespace: Name | None = None


@REGISTRY.event("access", "revoked")
class AccessRevoked(Payload):
    user: Id
    namespace: Name | None = None


# --- agents --------------------------------------------------------------------------------------


@REGISTRY.event("agent", "deployed")
class AgentDeployed(Payload):
    """A new agent exists with its first version and desired replica count."""

    agent_id: Id
    namespace: Name
    name: Name
    spec: AgentSpec
    replicas: Replicas
    autoscale: AutoscalePolicy | None = None


@REGISTRY.event("agent", "scaled")
class AgentScaled(Payload):
    agent_id: Id
    replicas: Replicas
    previous: Replicas
    #: The autoscaler's forecast and reasoning, when it asked for this count.
    autoscale: AutoscaleDecision | None = None


@REGISTRY.event("agent", "autoscale_changed")
class AgentAutoscaleChanged(Payload):
    """The agent's autoscaling policy was set (or removed: None)."""

    agent_id: Id
    autoscale: AutoscalePolicy | None
    previous: AutoscalePolicy | None = None


@REGISTRY.event("agent", "rollout_started")
class AgentRolloutStarted(Payload):
    """A new version becomes the target; replicas are replaced one surge at a time."""

    agent_id: Id
    spec: AgentSpec
    from_version: Version
    max_surge: Surge
    rollback: bool = False


@REGISTRY.event("agent", "rollout_completed")
class AgentRolloutCompleted(Payload):
    agent_id: Id
    version: Version


@REGISTRY.event("agent", "status_changed")
class AgentStatusChanged(Payload):
    """The agent's overall status moved; `reason` says why."""

    agent_id: Id
    status: AgentStatus
    previous: AgentStatus
    reason: Reason


@REGISTRY.event("agent", "deleted")
class AgentDeleted(Payload):
    agent_id: Id
    reason: Reason


# --- replicas (on the agent aggregate) ------------------------------------------------------------


@REGISTRY.event("agent", "replica_requested")
class ReplicaRequested(Payload):
    """A replica should run; the scheduler will propose where."""

    agent_id: Id
    replica_id: Id
    version: Version
    #: The snapshot it must resume from (after a crash or the loss of its pod).
    snapshot: SnapshotRef | None = None
    reason: Reason
    #: `latest`: resume from the newest state saved under the snapshot's key (or the replica's
    #: own); `exact` (a healing rewind): from the newest state the replica saved before
    #: `before` if its pod still keeps one, else from exactly `snapshot` (None: empty).
    restore: Literal["latest", "exact"] = "latest"
    before: datetime | None = None


@REGISTRY.event("agent", "replica_scheduled")
class ReplicaScheduled(Payload):
    agent_id: Id
    replica_id: Id
    pod_id: Id
    policy: PolicyName
    reason: Reason


@REGISTRY.event("agent", "replica_starting")
class ReplicaStarting(Payload):
    agent_id: Id
    replica_id: Id
    pod_id: Id
    snapshot: SnapshotRef | None = None


@REGISTRY.event("agent", "replica_running")
class ReplicaRunning(Payload):
    agent_id: Id
    replica_id: Id
    pod_id: Id


@REGISTRY.event("agent", "replica_crashed")
class ReplicaCrashed(Payload):
    """A replica crashed; it restarts at `restart_at` unless it crashed too often."""

    agent_id: Id
    replica_id: Id
    pod_id: Id | None
    reason: Reason
    #: Crashes within the restart window, this one included (at most one past `max_restarts`).
    crashes: int = Field(ge=1, le=MAX_RESTARTS + 1)
    restart_at: datetime | None
    snapshot: SnapshotRef | None = None


@REGISTRY.event("agent", "replica_failed")
class ReplicaFailed(Payload):
    """A replica crashed too often within the restart window and is not restarted."""

    agent_id: Id
    replica_id: Id
    reason: Reason


@REGISTRY.event("agent", "replica_stopping")
class ReplicaStopping(Payload):
    """The replica's pod is asked to stop it (scale down, rollout, stop, delete)."""

    agent_id: Id
    replica_id: Id
    reason: Reason


@REGISTRY.event("agent", "replica_stopped")
class ReplicaStopped(Payload):
    agent_id: Id
    replica_id: Id
    reason: Reason
    snapshot: SnapshotRef | None = None


# --- pods ----------------------------------------------------------------------------------------


@REGISTRY.event("pod", "registered")
class PodRegistered(Payload):
    pod_id: Id
    capacity: Capacity
    labels: Labels = Field(default_factory=dict)
    zone: Zone
    energy_cost: EnergyCost
    lease_s: LeaseSeconds


@REGISTRY.event("pod", "lost")
class PodLost(Payload):
    """The pod's lease expired or it deregistered; its replicas were rescheduled."""

    pod_id: Id
    reason: Reason


# --- the Hive itself ------------------------------------------------------------------------------


@REGISTRY.event(names.HIVE_AGGREGATE, "leader_elected")
class HiveLeaderElected(Payload):
    """A Hive replica became leader and decides from here on.

    Written before its first decision, at the log position its state was folded to; every later
    append of that leader expects the log to end where its own last write did, so a deposed
    leader that wakes up (paused, partitioned) can no longer write once this is on the log.
    """

    node: Id
    #: pysyncobj's Raft term of the election.
    term: int = Field(ge=0, le=MAX_INT64)
    #: The last log sequence the new leader's state had folded.
    applied_seq: int = Field(ge=0, le=MAX_INT64)
