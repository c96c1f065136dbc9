"""Request and response bodies of the HTTP API (the command payloads themselves are `schemas`')."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from schemas.commands import MAX_REPLICAS
from schemas.specs import AgentSpec, Name, Quota, Version
from swarm.kernel.eventlog import Delivery


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
    agents: list[dict[str, Any]]
    #: The log position the answer reflects.
    applied_seq: int


class AgentDetail(BaseModel):
    agent: dict[str, Any]
    applied_seq: int
    #: The agent's most recent events, oldest first.
    events: list[LoggedEvent] = Field(default_factory=list)


class PodList(BaseModel):
    pods: list[dict[str, Any]]
    applied_seq: int


class NamespaceList(BaseModel):
    namespaces: list[dict[str, Any]]
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
