"""What can go wrong in the sandbox, as types the pod can act on.

Every error carries `reason`, one human-readable line fit for an event's `data.reason`, and
optionally `detail` (wasmtime's full message with the wasm backtrace) for logs. The type tells the
pod whom to blame: the module (InvalidModule), the agent's behaviour (the limit errors and
AgentTrap) or the pod itself (HostCallFailed), which matters for restart policy and reputation.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Base class; `str(error)` is the reason."""

    def __init__(self, reason: str, *, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class InvalidModule(SandboxError):
    """The bytes are not a module this sandbox can run (engine's reason, or the ABI check's)."""


class FuelExhausted(SandboxError):
    """The call used all of its fuel (`Limits.fuel_per_call`)."""


class DeadlineExceeded(SandboxError):
    """The call ran past its wall-clock deadline (`Limits.deadline_ms`)."""


class MemoryLimitExceeded(SandboxError):
    """The instance needs more linear memory than `Resources.memory_mb` allows."""


class AgentTrap(SandboxError):
    """The guest trapped (unreachable, out-of-bounds access, a bad host-call argument, ...)."""


class HostCallFailed(SandboxError):
    """A host function failed for a reason of the host's own (not the agent's fault)."""


class InitFailed(SandboxError):
    """`swarm_init` returned a non-zero code; the instance was not started."""

    def __init__(self, reason: str, *, code: int) -> None:
        super().__init__(reason)
        self.code = code


class InstanceBroken(SandboxError):
    """The instance failed before (or was closed) and must be replaced by a fresh one."""
