"""Request and response bodies of the HTTP API (the command payloads themselves are `schemas`')."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, model_validator

from schemas.commands import MAX_REPLICAS
from schemas.names import TOKEN_PATTERN
from schemas.specs import AgentSpec, AutoscalePolicy, Name, Quota, Version
from schemas.views import AgentDetailView, AgentView, NamespaceView, PodView
from schemas.webhooks import MAX_ATTEMPTS_LIMIT, Filter, Url
from swarm.client.eventlog import Delivery


class CausedEvent(BaseModel):
    id: str
    seq: int | None = None
    type: str | None = None
    subject: str | None = None


class CommandResult(BaseModel):
    """What became of a command: accepted or rejected by the Hive, or still pending."""

    command_id: str
    type: str | None = None
    status: Literal["accepted", "rejected", "pending"]
    #: Where the command landed in `SWARM_COMMANDS` (unknown when looked up later by id).
    command_seq: int | None = None
    #: The id was sent before; the first send is the one that counts.
    duplicate: bool = False
    outcome_seq: int | None = None
    #: The outcome CloudEvent, as the Hive wrote it.
    outcome: dict[str, Any] | None = None
    #: Events the accepted command caused.
    events: list[CausedEvent] = Field(default_factory=list)
    #: The new agent's id, for a deploy.
    agent_id: str | None = None


class CommandDocument(BaseModel):
    """Any command: a CloudEvent (`specversion`, `id`, `source`, `time`… are filled in when left
    out), or just `type` and `data`. `identity` is the API's and may be left out."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$",
        max_length=256,
        examples=["swarm.cmd.namespace.create"],
    )
    data: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    source: str | None = Field(default=None, min_length=1, max_length=512)
    identity: str | None = Field(default=None, max_length=256)


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    spec: AgentSpec
    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(ge=0, le=MAX_REPLICAS)


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: AgentSpec
    max_surge: int = Field(default=1, ge=1, le=1000)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to_version: Version | None = None


class StopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="stopped by request", max_length=500)


class ReasonRequest(BaseModel):
    """Why a person quarantines or releases an agent (kept on the log)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=1000)


class AutoscaleRequest(BaseModel):
    """The whole autoscaling policy (as `swarm agent autoscale` sends it); null stops it."""

    model_config = ConfigDict(extra="forbid")

    autoscale: AutoscalePolicy | None


class NamespaceCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    quota: Quota = Quota()


class QuotaChanges(BaseModel):
    """Limits to change; a limit set to null becomes unlimited, one left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    max_agents: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=0)
    max_memory_mb: int | None = Field(default=None, ge=0)
    max_fuel_per_s: int | None = Field(default=None, ge=0)


class NamespaceUpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quota: QuotaChanges


class AgentList(BaseModel):
    agents: list[AgentView]
    #: The log position the answer reflects.
    applied_seq: int


class AgentDetail(BaseModel):
    agent: AgentDetailView
    applied_seq: int
    #: The agent's most recent events, oldest first.
    events: list[LoggedEvent] = Field(default_factory=list)


class PodList(BaseModel):
    pods: list[PodView]
    applied_seq: int


class NamespaceList(BaseModel):
    namespaces: list[NamespaceView]
    applied_seq: int


class LoggedEvent(BaseModel):
    """One entry of `SWARM_EVENTS`: its position, subject and the CloudEvent itself."""

    seq: int
    subject: str
    time: str
    #: The CloudEvent as JSON (null if the entry is not a JSON object).
    event: dict[str, Any] | None

    @classmethod
    def of(cls, delivery: Delivery) -> LoggedEvent:
        try:
            body = json.loads(delivery.data)
        except ValueError:
            body = None
        return cls(
            seq=delivery.stream_seq,
            subject=delivery.subject,
            time=delivery.timestamp.isoformat(),
            event=body if isinstance(body, dict) else None,
        )


class EventPage(BaseModel):
    events: list[LoggedEvent]
    #: Pass as `after` to read the next page; null when the page reached the end of the log.
    next_after: int | None
    #: The last sequence in the log when the page was read.
    last_seq: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    detail: str = ""


#: The pattern of namespace and agent names, as the command schemas define it.
NAME_PATTERN: str = TypeAdapter(Name).json_schema()["pattern"]


class SchemaEntry(BaseModel):
    type: str
    kind: Literal["command", "event"]
    version: int


class SchemaList(BaseModel):
    schemas: list[SchemaEntry]


# --- Webhooks ------------------------------------------------------------------------------------


class WebhookCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url = Field(
        description="Where to POST the events (http or https; the Hive checks it).",
        examples=["https://ops.example.com/swarm"],
    )
    filter: Filter = Field(
        description="Subject pattern of the events to send ('*' one token, '>' the rest).",
        examples=["swarm.evt.agent.*.replica_failed"],
    )
    secret: SecretStr | None = Field(
        default=None,
        max_length=200,
        description=(
            "Standard Webhooks secret (`whsec_<base64 of 24 to 64 bytes>`); generated and "
            "returned once when left out."
        ),
    )
    max_attempts: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ATTEMPTS_LIMIT,
        description="Attempts per event before it is dead-lettered (default: the dispatcher's).",
    )
    description: str = Field(default="", max_length=200, description="A note for people.")


class WebhookCreated(BaseModel):
    """The subscription as requested; `command` says whether the Hive has accepted it yet."""

    webhook_id: str
    url: str
    filter: str
    max_attempts: int | None
    description: str
    secret_fingerprint: str
    #: The generated secret, shown this once (null when the request gave one).
    secret: str | None = Field(
        description="The generated secret, shown this once; null when the request gave one."
    )
    command: CommandResult


class WebhookList(BaseModel):
    #: The subscriptions (not removed), without their secrets.
    webhooks: list[dict[str, Any]]
    applied_seq: int


class WebhookDeliveries(BaseModel):
    #: Delivery attempts, oldest first (null with `dead=true`).
    deliveries: list[dict[str, Any]] | None = None
    #: Events given up on, oldest first (only with `dead=true`).
    dead_letters: list[dict[str, Any]] | None = None


class RedeliverRequest(BaseModel):
    """Dead-lettered events to send again: the ones named, or all of them (`all_dead`)."""

    model_config = ConfigDict(extra="forbid")

    event_ids: list[Annotated[str, Field(pattern=TOKEN_PATTERN)]] = Field(
        default_factory=list, max_length=1000, description="CloudEvents ids of dead letters."
    )
    all_dead: bool = Field(default=False, description="Every dead letter (of `subscription`).")
    subscription: str | None = Field(
        default=None, pattern=TOKEN_PATTERN, description="Only this webhook's dead letters."
    )

    @model_validator(mode="after")
    def _one_way(self) -> RedeliverRequest:
        if bool(self.event_ids) == self.all_dead:
            raise ValueError("give event_ids or all_dead: true (not both)")
        return self


class Redelivery(BaseModel):
    webhook_id: str
    #: The dead letters this request sends again.
    event_ids: list[str]
    command: CommandResult


class RedeliveryResult(BaseModel):
    #: One `webhook.redeliver` command per webhook concerned (none when nothing is dead).
    requests: list[Redelivery]


# --- Reads the CLI has beyond the Hive's queries: market, logs, traces ----------------------------


class MarketState(BaseModel):
    """The scheduler's market as it answers `swarm.query.market.state` (as `swarm market`)."""

    model_config = ConfigDict(extra="allow")

    policy: str | None = Field(default=None, description="The placement policy in use.")
    pricing: dict[str, Any] = Field(
        default_factory=dict, description="Base price, slope and energy weight of the prices."
    )
    live: bool | None = Field(default=None, description="The scheduler has caught up with the log.")
    applied_seq: int | None = Field(default=None, description="Log position its view reflects.")
    waiting: int = Field(default=0, description="Replicas waiting for a place.")
    in_flight: int = Field(default=0, description="Placements proposed, not yet decided.")
    offers: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Per pod: free capacity, utilisation, price and energy per 64 MB unit, labels.",
    )
    clearings: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Latest clearings, oldest first: replica, outcome, pod, price and reason.",
    )


class LogLine(BaseModel):
    """One log entry of an agent's replica, as the pod wrote it (other fields are kept)."""

    model_config = ConfigDict(extra="allow")

    time: str = Field(description="When it was logged (RFC 3339, UTC, milliseconds).")
    level: str = "info"
    replica_id: str | None = None
    message: str | None = None


class AgentLogs(BaseModel):
    agent_id: str
    #: The most recent matching lines, oldest first.
    lines: list[LogLine]
    #: More lines matched than `limit`; the oldest were left out.
    truncated: bool


class TraceNode(BaseModel):
    """A command, event or outcome in a causation tree, with the entries it caused."""

    id: str
    type: str
    kind: Literal["command", "event", "outcome"]
    time: str | None
    #: Milliseconds after the root command.
    offset_ms: float | None
    source: str
    subject: str
    seq: int
    causationid: str | None
    summary: str
    #: For a command: milliseconds from it to its outcome.
    decided_ms: float | None
    children: list[TraceNode]


class Trace(BaseModel):
    #: The id asked about.
    id: str
    #: The trees, the root command's first (what has no cause on the log is a root of its own).
    trace: list[TraceNode]


class SimilarAgent(BaseModel):
    agent_id: str
    namespace: str
    name: str
    #: Cosine distance between the latest behaviour vectors (0: the same behaviour).
    distance: float
    #: End of the Observer window the vector is from.
    window_end: datetime


class SimilarAgents(BaseModel):
    #: The agent asked about.
    agent_id: str
    #: Nearest first.
    similar: list[SimilarAgent]


class TaskQueued(BaseModel):
    """A task stored on its queue, kept until a replica taking the queue has handled it."""

    task_id: str
    queue: str
    #: Where the task landed in SWARM_TASKS.
    seq: int
    #: The id was sent before (`Idempotency-Key`); the first task with it is the one kept.
    duplicate: bool
