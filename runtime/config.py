"""Pod settings (`SWARM_POD_*`); where NATS is comes from the shared `Settings`."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.kvstate import StateCaps
from schemas import names
from schemas.specs import MAX_STATE_BYTES, MAX_STATE_KEYS

_MIB = 1024 * 1024


def default_pod_id() -> str:
    """The host name as a subject token: a pod restarted on the same host keeps its identity,
    so it re-registers and resumes the replicas the log still places on it."""
    token = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64].strip("-")
    return token or "pod"


class PodSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWARM_POD_", extra="ignore", frozen=True)

    id: str = Field(default_factory=default_pod_id)
    #: Capacity offered to the scheduler.
    memory_mb: int = Field(default=4096, ge=1)
    fuel_per_s: int = Field(default=10_000_000_000, ge=1)
    slots: int = Field(default=100, ge=1, le=1_000_000)
    zone: str = Field(default="default", max_length=64)
    labels: dict[str, str] = Field(default_factory=dict)
    energy_cost: float = Field(default=1.0, ge=0)
    #: The Hive declares the pod lost after this long without a heartbeat; we beat 4x as often.
    lease_s: float = Field(default=10.0, gt=0, le=3600)
    #: Compiled-module cache; default `./.swarm/pods/<id>/modules`.
    cache_dir: Path | None = None
    #: Messages waiting per replica; more are refused with {"error": "mailbox full"}.
    mailbox_size: int = Field(default=256, ge=1)
    #: How often changed kv state is saved, and metrics published.
    snapshot_interval_s: float = Field(default=5.0, gt=0)
    metrics_interval_s: float = Field(default=5.0, gt=0)
    #: Threads running wasm calls. A looping agent holds one until its deadline (at most
    #: `limits.deadline_ms`, 60 s), so the pod shares them out per agent (runtime/workers.py).
    workers: int = Field(default=16, ge=1, le=1024)
    #: The most workers one agent (all its replicas on this pod) holds at once; None: half of
    #: `workers`, rounded up, so one agent's replicas always leave room for the others.
    workers_per_agent: int | None = Field(default=None, ge=1, le=1024)
    #: Upper bounds of every replica's key-value state (the spec's `limits.state_bytes` and
    #: `limits.state_keys` apply when lower): the pod's memory for agent state is bounded by
    #: these times the replicas it runs.
    max_state_bytes: int = Field(default=64 * _MIB, ge=0, le=MAX_STATE_BYTES)
    max_state_keys: int = Field(default=100_000, ge=0, le=MAX_STATE_KEYS)
    #: Events read per fetch, and how long a fetch waits when the log is quiet.
    fetch_batch: int = Field(default=1000, ge=1)
    idle_s: float = Field(default=0.05, gt=0)
    #: Postgres connections for vector memory (used when SWARM_DATABASE_URL is set).
    memory_connections: int = Field(default=4, ge=1, le=256)
    #: The `net` capability (agents' http_request, runtime/net.py). Off by default: requests to
    #: loopback, private, link-local and other non-public addresses are refused (server-side
    #: request forgery); a pod meant to reach its own network, or a test, turns this on.
    net_allow_private: bool = False
    #: Body caps of one agent HTTP request and of its response.
    net_max_request_bytes: int = Field(default=1024 * 1024, ge=0, le=64 * 1024 * 1024)
    net_max_response_bytes: int = Field(default=1024 * 1024, ge=0, le=64 * 1024 * 1024)

    @field_validator("id")
    @classmethod
    def _token(cls, value: str) -> str:
        if not names.is_token(value):
            raise ValueError(f"pod id {value!r} must match {names.TOKEN_PATTERN}")
        return value

    def state_caps(self) -> StateCaps:
        return StateCaps(max_bytes=self.max_state_bytes, max_keys=self.max_state_keys)

    def agent_workers(self) -> int:
        """Workers one agent may hold at once (`workers_per_agent`, at most `workers`)."""
        if self.workers_per_agent is not None:
            return min(self.workers_per_agent, self.workers)
        return -(-self.workers // 2)

    def module_cache_dir(self) -> Path:
        return self.cache_dir or Path(".swarm") / "pods" / self.id / "modules"
