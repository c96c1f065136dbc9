"""What the Hive's read queries answer (`swarm.query.…`), typed: an agent, its replicas and its
health, a pod, a namespace, a webhook subscription, and each answer with the `applied_seq` it
reflects.

The Hive builds its answers from these models, the HTTP API declares them in its OpenAPI
document, and `schemas.export` writes their JSON Schema beside the commands' and events', so a
client in any language knows the shape of an agent without reading the Hive. Times keep the
Hive's ISO 8601 form (`+00:00`). Fields are additive: a reader ignores what it does not know.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from schemas.specs import AccessRole, AutoscalePolicy, Capacity, Quota
from schemas.status import AgentStatus

#: A time as the Hive writes it: `datetime.isoformat()` of an aware UTC time.
Time = Annotated[datetime, PlainSerializer(lambda t: t.isoformat(), return_type=str)]


class View(BaseModel):
    # defer_build: a view's validator is built when it is first used, so a reader of one answer
    # (`swarm agent ls`) does not build every other's (~8 ms of its start here, bench/cli.py).
    model_config = ConfigDict(
        extra="allow", frozen=True, populate_by_name=True, allow_inf_nan=False, defer_build=True
    )


class ReplicaCounts(View):
    desired: int
    running: int
    #: Replicas that count towards `desired` (requested, scheduled, starting, running, crashed).
    active: int


class RolloutView(View):
    version: str
    from_version: str = Field(alias="from")
    rollback: bool


class QuarantineView(View):
    reason: str
    anomaly_id: str | None
    at: Time


class ReputationView(View):
    #: Trust now (recovering with time since `at`), and as recorded then.
    trust: float
    recorded: float
    at: Time | None
    published: float | None
    reason: str


class AgentAnomalyView(View):
    anomaly_id: str
    kind: str
    severity: str
    score: float
    at: Time | None
    replica_id: str | None
    window_start: Time | None
    summary: str


class HealingView(View):
    action: str
    reason: str
    anomaly_id: str | None
    replica_id: str | None
    at: Time


class InstanceView(View):
    """One replica of an agent."""

    replica_id: str
    version: str
    #: requested, scheduled, starting, running, stopping, stopped, crashed, failed.
    phase: str
    pod_id: str | None
    reason: str
    snapshot: str | None
    #: Crashes within the restart window.
    crashes: int
    restart_at: Time | None


class AgentView(View):
    """An agent as `swarm agent ls` lists it."""

    agent_id: str
    namespace: str
    name: str
    version: str
    status: AgentStatus
    reason: str
    replicas: ReplicaCounts
    rollout: RolloutView | None
    deleted: bool
    created_at: Time | None
    #: Log sequence of the agent's last event.
    last_seq: int
    autoscale: AutoscalePolicy | None
    #: Trust in [0, 1] (reputation), and the quarantine in force, if any.
    trust: float
    quarantined: QuarantineView | None


class AgentDetailView(AgentView):
    """An agent as `swarm agent get` shows it: its spec, history, replicas and health."""

    reputation: ReputationView
    anomalies: list[AgentAnomalyView]
    healing: list[HealingView]
    #: The deployed spec (an inline module's bytes left out).
    spec: dict[str, Any]
    #: Versions deployed, oldest first.
    history: list[str]
    instances: list[InstanceView]
    #: Why the status is what it is, rule by rule.
    derived_status: list[str]


class FreeCapacity(View):
    memory_mb: int
    fuel_per_s: int
    slots: int


class PodAnomalyView(View):
    """A machine-wide finding recorded on the pod (never acted on by healing)."""

    anomaly_id: str
    #: `pod` or `cluster`.
    scope: str
    kind: str
    severity: str
    at: Time | None
    #: Agents that deviated together.
    agents: int
    summary: str


class PodView(View):
    pod_id: str
    #: `ready` or `lost`.
    status: str
    zone: str
    labels: dict[str, str]
    energy_cost: float
    lease_s: float
    capacity: Capacity
    free: FreeCapacity
    #: Replicas holding resources on it.
    replicas: int
    #: Its latest machine-wide findings, the latest last.
    anomalies: list[PodAnomalyView]


class NamespaceView(View):
    name: str
    quota: Quota
    #: Agents in it (deleted ones left out).
    agents: int


class GrantView(View):
    """User `user` holds `role` in `namespace` (None: in every namespace)."""

    user: str
    namespace: str | None
    role: AccessRole


class WebhookView(View):
    webhook_id: str
    url: str
    filter: str
    #: None: the dispatcher's own default (`SWARM_WEBHOOK_MAX_ATTEMPTS`).
    max_attempts: int | None
    #: Identifies the signing secret without revealing it.
    secret_fingerprint: str
    description: str
    created_at: Time | None
    added_seq: int


class Answer(View):
    #: The last log sequence the answering replica had folded: an answer reflects an outcome
    #: at sequence N when this is at least N.
    applied_seq: int = 0


class AgentsAnswer(Answer):
    agents: list[AgentView]


class AgentAnswer(Answer):
    agent: AgentDetailView


class PodsAnswer(Answer):
    pods: list[PodView]


class NamespacesAnswer(Answer):
    namespaces: list[NamespaceView]


class WebhooksAnswer(Answer):
    webhooks: list[WebhookView]


class AccessAnswer(Answer):
    grants: list[GrantView]


#: The answers whose JSON Schema `schemas.export` writes (file name stem -> model).
ANSWERS: dict[str, type[Answer]] = {
    "agents": AgentsAnswer,
    "agent": AgentAnswer,
    "pods": PodsAnswer,
    "namespaces": NamespacesAnswer,
    "webhooks": WebhooksAnswer,
    "access": AccessAnswer,
}

__all__ = [
    "ANSWERS",
    "AgentAnomalyView",
    "AgentAnswer",
    "AgentDetailView",
    "AgentView",
    "AgentsAnswer",
    "Answer",
    "FreeCapacity",
    "HealingView",
    "InstanceView",
    "NamespaceView",
    "NamespacesAnswer",
    "PodAnomalyView",
    "PodView",
    "PodsAnswer",
    "QuarantineView",
    "ReplicaCounts",
    "ReputationView",
    "RolloutView",
    "Time",
    "WebhookView",
    "WebhooksAnswer",
]
