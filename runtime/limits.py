"""The sandbox policy as a value: what one agent instance may consume per call and in total."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from runtime.kvstate import StateCaps
from schemas.specs import AgentSpec, Limits, Resources

Capability = Literal["fs", "net", "env"]

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class CallBudget:
    """Bounds on the host calls of one `handle`, so a guest cannot make the host allocate freely.

    Counts are per call and reset at the next one. `max_output_bytes` caps everything the host
    copies out of the guest in one call (replies, sends, events, kv values, vectors), so the
    host's memory for one call is bounded whatever the mix.
    """

    max_message_bytes: int = 1 * _MIB
    max_name_bytes: int = 256
    max_log_bytes: int = 4096
    max_replies: int = 16
    max_sends: int = 64
    max_emits: int = 64
    max_logs: int = 100
    max_kv_ops: int = 1024
    max_vector_ops: int = 16
    max_output_bytes: int = 8 * _MIB
    max_random_bytes: int = 64 * 1024
    max_vector_dims: int = 4096
    max_search_k: int = 100
    #: The `net` capability's http_request: requests per call, request body, response body.
    max_http_requests: int = 16
    max_http_request_bytes: int = 1 * _MIB
    max_http_response_bytes: int = 1 * _MIB

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"CallBudget.{f.name} must be >= 0")


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Limits of one agent instance; defaults are those of `schemas.specs`."""

    fuel_per_call: int = Limits.model_fields["fuel_per_call"].default
    deadline_ms: int = Limits.model_fields["deadline_ms"].default
    memory_bytes: int = Resources.model_fields["memory_mb"].default * _MIB
    #: Caps on the replica's key-value state (keys plus values in bytes, and keys): a kv_put
    #: beyond either is LIMIT (runtime/kvstate.py). The spec's, bounded by the pod's.
    state_bytes: int = Limits.model_fields["state_bytes"].default
    state_keys: int = Limits.model_fields["state_keys"].default
    #: Host capabilities beyond the default sandbox. "net" is the http_request host call, for
    #: both kinds of agents; "fs" and "env" are WASI and reach components only (a core module
    #: importing WASI is refused whatever this says; see runtime/ABI.md, "Capabilities").
    capabilities: frozenset[Capability] = frozenset()
    #: The guest's environment (name, value) pairs; given to components only with "env".
    env: tuple[tuple[str, str], ...] = ()
    #: Host patterns "net" requests may go to (`AgentSpec.network.allow`); empty: any host.
    net_allow: tuple[str, ...] = ()
    #: Table growth is the other way to allocate host memory from wasm (8 bytes per element).
    max_table_elements: int = 100_000
    budget: CallBudget = field(default_factory=CallBudget)

    def __post_init__(self) -> None:
        for name in ("fuel_per_call", "deadline_ms", "memory_bytes", "max_table_elements"):
            if getattr(self, name) < 1:
                raise ValueError(f"SandboxLimits.{name} must be >= 1")
        for name in ("state_bytes", "state_keys"):
            if getattr(self, name) < 0:
                raise ValueError(f"SandboxLimits.{name} must be >= 0")
        for name, value in self.env:
            if not name or "=" in name or "\0" in name or "\0" in value:
                raise ValueError(f"SandboxLimits.env: bad variable {name!r}")

    @property
    def state_caps(self) -> StateCaps:
        return StateCaps(max_bytes=self.state_bytes, max_keys=self.state_keys)

    @classmethod
    def from_spec(
        cls,
        spec: AgentSpec,
        *,
        budget: CallBudget | None = None,
        pod_state: StateCaps | None = None,
    ) -> SandboxLimits:
        """The spec's limits; `pod_state` bounds the state caps (the pod's own maxima)."""
        pod_state = pod_state or StateCaps()
        return cls(
            fuel_per_call=spec.limits.fuel_per_call,
            deadline_ms=spec.limits.deadline_ms,
            memory_bytes=spec.resources.memory_mb * _MIB,
            state_bytes=min(spec.limits.state_bytes, pod_state.max_bytes),
            state_keys=min(spec.limits.state_keys, pod_state.max_keys),
            capabilities=frozenset(spec.capabilities),
            env=tuple(sorted(spec.env.items())),
            net_allow=tuple(spec.network.allow),
            budget=budget or CallBudget(),
        )
