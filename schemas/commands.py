"""Commands: what users, pods, the scheduler and the Hive's own reconcile loop ask for.

Each is published on its type as subject (`swarm.cmd.<domain>.<verb>`) and answered with exactly
one outcome. Agents are addressed by namespace and name, the way users think of them; pods and
the scheduler address replicas by id.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.envelope import Payload
from schemas.registry import REGISTRY
from schemas.specs import MAX_REPLICAS as MAX_REPLICAS  # re-exported: the CLI bounds by it
from schemas.specs import (
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
    Replicas,
    SnapshotRef,
    Surge,
    Version,
    Zone,
)

#: How long ago a pod's last heartbeat may be said to be (ten years: the Hive measures it from
#: its own clock, so any real age is far below).
MAX_HEARTBEAT_AGE_S = 10 * 365 * 86_400.0

# --- namespaces ----------------------------------------------------------------------------------


@REGISTRY.command("namespace", "create")
class CreateNamespace(Payload):
    """Create a namespace with its quota."""

    name: Name
    quota: Quota = Quota()


@REGISTRY.command("namespace", "update")
class UpdateNamespace(Payload):
    """Replace a namespace's quota (existing agents keep running; new requests are checked)."""

    name: Name
    quota: Quota


# --- access: who may act in which namespace ------------------------------------------------------


@REGISTRY.command("access", "grant")
class GrantAccess(Payload):
    """Give user `user` (a principal `swarm user add` issued) `role` in `namespace`, or in every
    namespace when it is left out, in place of the role it held there."""

    user: Id
    role: AccessRole
    namespace: Name | None = None


@REGISTRY.command("access", "revoke")
class RevokeAccess(Payload):
    """Take back what user `user` held in `namespace` (or across every namespace)."""

    user: Id
    namespace: Name | None = None


# --- agents --------------------------------------------------------------------------------------


class AgentCommand(Payload):
    namespace: Name = "default"
    name: Name


@REGISTRY.command("agent", "deploy")
class DeployAgent(AgentCommand):
    """Deploy a new agent with its first version."""

    spec: AgentSpec
    replicas: Replicas = 1
    #: Autoscaling from the start (None: off; `agent.autoscale` changes it later).
    autoscale: AutoscalePolicy | None = None


@REGISTRY.command("agent", "scale")
class ScaleAgent(AgentCommand):
    """Change how many replicas of the agent should run."""

    replicas: Replicas
    #: Set by the autoscaler: the forecast behind the count (copied to `agent.scaled`).
    autoscale: AutoscaleDecision | None = None


@REGISTRY.command("agent", "autoscale")
class AutoscaleAgent(AgentCommand):
    """Set (or with None, remove) the agent's autoscaling policy; replicas are not touched here,
    the autoscaler brings the count within the new bounds on its next pass."""

    autoscale: AutoscalePolicy | None


@REGISTRY.command("agent", "rollout")
class RolloutAgent(AgentCommand):
    """Roll out a new version: new replicas run before old ones stop."""

    spec: AgentSpec
    #: How many new-version replicas may be started beyond the desired count at once.
    max_surge: Surge = 1


@REGISTRY.command("agent", "rollback")
class RollbackAgent(AgentCommand):
    """Roll back to an earlier version (the previous one when none is named)."""

    to_version: Version | None = None


@REGISTRY.command("agent", "stop")
class StopAgent(AgentCommand):
    """Stop every replica; the agent and its versions are kept (scale up to start again)."""

    reason: str = Field(default="stopped by request", max_length=500)


@REGISTRY.command("agent", "delete")
class DeleteAgent(AgentCommand):
    """Stop every replica and remove the agent."""


# --- pods ----------------------------------------------------------------------------------------


@REGISTRY.command("pod", "register")
class RegisterPod(Payload):
    """A pod announces itself and what it offers; registering again updates it."""

    pod_id: Id
    capacity: Capacity
    labels: Labels = Field(default_factory=dict)
    zone: Zone = "default"
    #: Relative energy cost of one unit of work on this pod (for energy-aware placement).
    energy_cost: EnergyCost = 1.0
    #: Seconds without a heartbeat after which the pod's lease expires.
    lease_s: LeaseSeconds = 10.0


@REGISTRY.command("pod", "deregister")
class DeregisterPod(Payload):
    """A pod leaves cleanly; its replicas are rescheduled elsewhere."""

    pod_id: Id
    reason: str = Field(default="deregistered", max_length=500)


@REGISTRY.command("pod", "expire")
class ExpirePod(Payload):
    """Issued by the Hive's reconcile loop when a pod's lease ran out."""

    pod_id: Id
    last_heartbeat_age_s: float = Field(ge=0, le=MAX_HEARTBEAT_AGE_S)
    #: The lease the pod was held to: its own, stretched to the heartbeat jitter measured.
    lease_s: float | None = Field(default=None, ge=0, le=MAX_HEARTBEAT_AGE_S)
    #: The pod was asked directly (`names.probe_subject`) and did not answer.
    probed: bool = False


# --- placement and replica reports ---------------------------------------------------------------


@REGISTRY.command("placement", "propose")
class ProposePlacement(Payload):
    """The scheduler proposes where a replica should run; the Hive checks capacity and commits."""

    agent_id: Id
    replica_id: Id
    pod_id: Id
    policy: PolicyName
    reason: str = Field(default="", max_length=500)


ReplicaStatus = Literal["starting", "running", "crashed", "stopped"]


@REGISTRY.command("replica", "report")
class ReportReplica(Payload):
    """A pod reports what happened to a replica it runs."""

    agent_id: Id
    replica_id: Id
    pod_id: Id
    status: ReplicaStatus
    reason: str = Field(default="", max_length=2000)
    #: Snapshot the replica resumed from (on starting) or saved last (on stopped/crashed).
    snapshot: SnapshotRef | None = None


@REGISTRY.command("replica", "restart")
class RestartReplica(Payload):
    """Issued by the reconcile loop when a crashed replica's backoff has elapsed."""

    agent_id: Id
    replica_id: Id
