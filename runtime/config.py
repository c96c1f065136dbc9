"""Pod settings (`SWARM_POD_*`); where NATS is comes from the shared `Settings`.

What the pod announces to the Hive (`pod.register`: capacity, zone, labels, energy cost, lease)
is bounded here by the very constants and types of the command's schema (schemas/specs.py), so a
setting the Hive would refuse fails when the pod starts, naming the variable, rather than as a
rejected registration once it runs.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.kvstate import StateCaps
from schemas import names
from schemas.specs import (
    MAX_ENERGY_COST,
    MAX_FUEL_PER_S,
    MAX_LEASE_S,
    MAX_POD_MEMORY_MB,
    MAX_POD_SLOTS,
    MAX_STATE_BYTES,
    MAX_STATE_KEYS,
    MIN_LEASE_S,
    Labels,
    Zone,
)
from swarm.kernel.settings import SettingsRefused, load

_MIB = 1024 * 1024


def default_pod_id() -> str:
    """The host name as a subject token: a pod restarted on the same host keeps its identity,
    so it re-registers and resumes the replicas the log still places on it."""
    token = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64].strip("-")
    return token or "pod"


class PodSettings(BaseSettings):
    # allow_inf_nan=False: "nan" or "inf" in a variable is refused like any number out of range.
    model_config = SettingsConfigDict(
        env_prefix="SWARM_POD_", extra="ignore", frozen=True, allow_inf_nan=False
    )

    id: str = Field(default_factory=default_pod_id)
    #: Capacity offered to the scheduler (the bounds of `schemas.specs.Capacity`).
    memory_mb: int = Field(default=4096, ge=1, le=MAX_POD_MEMORY_MB)
    fuel_per_s: int = Field(default=10_000_000_000, ge=1, le=MAX_FUEL_PER_S)
    slots: int = Field(default=100, ge=1, le=MAX_POD_SLOTS)
    zone: Zone = "default"
    #: JSON in the environment: `SWARM_POD_LABELS='{"gpu": "a100"}'`.
    labels: Labels = Field(default_factory=dict)
    energy_cost: float = Field(default=1.0, ge=0, le=MAX_ENERGY_COST)
    #: The Hive declares the pod lost after this long without a heartbeat (stretched to the
    #: jitter it measures) and no answer to a liveness probe; heartbeats go 4x as often, from
    #: their own thread (runtime/heartbeat.py).
    lease_s: float = Field(default=10.0, ge=MIN_LEASE_S, le=MAX_LEASE_S)
    #: An event loop that has not run for this long is wedged, not busy: the heartbeat thread
    #: then falls silent so the Hive moves the agents (it beats again once the loop runs).
    loop_stall_s: float = Field(default=60.0, gt=0, le=MAX_LEASE_S)
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
    #: The stack's principals (`principals.json`, swarm/devstack/principals.py;
    #: `SWARM_POD_PRINCIPALS_FILE`): with them, the pod's agents see only mesh messages one of
    #: them signed, as an identity its role may claim (runtime/meshguard.py). None: every
    #: message is taken, as on a NATS server that admits anyone.
    principals_file: Path | None = None

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


class PodSettingsError(SettingsRefused):
    """A `SWARM_POD_*` setting is out of bounds; the message names the variables."""


def load_pod_settings() -> PodSettings:
    """`PodSettings()` from the environment, or a `PodSettingsError` (the process exits with
    its message) naming each bad variable and its bound, before the pod connects anywhere."""
    return load(PodSettings, "pod setting", PodSettingsError)
