"""Value objects shared by commands and events: agent specs, resources, quotas, capacity."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from schemas import names

Name = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$")]
"""A DNS-label-like name (namespaces, agents): lowercase, digits, inner dashes, <= 52 chars."""

Id = Annotated[str, Field(pattern=names.TOKEN_PATTERN)]
"""An identifier that may stand in a subject token."""

Version = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

#: Largest module that may travel inline in a command; bigger ones go to the object store.
INLINE_MODULE_MAX_BYTES = 256 * 1024


class Value(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _check_base64(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("inline module must be base64") from None
    if len(raw) > INLINE_MODULE_MAX_BYTES:
        raise ValueError(
            f"inline module is {len(raw)} bytes; push modules over "
            f"{INLINE_MODULE_MAX_BYTES} bytes with `swarm module push` and refer to their sha256"
        )
    return value


def _no_repeats(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("topics must not repeat")
    return values


class ModuleRef(Value):
    """Where an agent's WebAssembly module is: in the object store by sha256, or inline."""

    sha256: Sha256 | None = None
    inline: Annotated[str, AfterValidator(_check_base64)] | None = None
    kind: Literal["core", "component"] = "core"

    @model_validator(mode="after")
    def _exactly_one(self) -> ModuleRef:
        if (self.sha256 is None) == (self.inline is None):
            raise ValueError("give exactly one of module.sha256 or module.inline")
        return self


class Resources(Value):
    """What one replica of an agent reserves on the pod that runs it."""

    memory_mb: int = Field(default=64, ge=1, le=65_536)
    fuel_per_s: int = Field(default=10_000_000, ge=1)


class RestartPolicy(Value):
    """Crash handling: exponential backoff, and `failed` after too many crashes in a window."""

    max_restarts: int = Field(default=5, ge=0, le=1000)
    window_s: float = Field(default=300.0, gt=0)
    backoff_s: float = Field(default=1.0, gt=0)
    max_backoff_s: float = Field(default=60.0, gt=0)


class Limits(Value):
    """Per-call sandbox limits (the runtime enforces them)."""

    deadline_ms: int = Field(default=1000, ge=1, le=600_000)
    fuel_per_call: int = Field(default=100_000_000, ge=1)


#: What the Hive does about a misbehaving agent (`none`: only record the finding).
HealingAction = Literal["none", "quarantine", "restart", "rollback"]


class HealingPolicy(Value):
    """How the Hive reacts to the Observer's findings about this agent (see schemas/healing.py).

    A critical finding, `repeat` findings of at least warning severity within `window_s`, or a
    trust below `min_trust` each trigger their action, at most once per `cooldown_s`. `restart`
    rewinds the replica the finding is about (every running replica when it names none) to its
    last snapshot from before the anomaly began. With `rollback_on_regression`, any action
    becomes a rollback when the anomaly began within `regression_s` of this version's rollout
    and an earlier version exists.
    """

    on_critical: HealingAction = "quarantine"
    on_repeated: HealingAction = "restart"
    repeat: int = Field(default=3, ge=1, le=20)
    window_s: float = Field(default=300.0, gt=0)
    on_low_trust: HealingAction = "quarantine"
    #: 0 disables the trust trigger.
    min_trust: float = Field(default=0.2, ge=0, le=1)
    rollback_on_regression: bool = True
    regression_s: float = Field(default=600.0, ge=0)
    cooldown_s: float = Field(default=30.0, ge=0)


class AgentSpec(Value):
    """Everything that defines one version of an agent."""

    version: Version
    module: ModuleRef
    resources: Resources = Resources()
    limits: Limits = Limits()
    restart: RestartPolicy = RestartPolicy()
    #: Command types this agent may issue on its own (its autonomy bounds), e.g.
    #: ["swarm.cmd.agent.scale"]; anything else it sends is rejected with rule "autonomy".
    autonomy: list[str] = Field(default_factory=list, max_length=64)
    #: Host capabilities beyond the default sandbox ("fs", "net", "env").
    capabilities: list[Literal["fs", "net", "env"]] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=-1000, le=1000)
    #: Topics the agent subscribes to (subject tokens, at most 32, no repeats; topic names are
    #: global, not per namespace): every message published on one of them, e.g. by another
    #: agent's `send("topic:<name>", ...)`, is handled once by one of this agent's replicas,
    #: fire-and-forget (no reply; dropped when that replica's mailbox is full). See ABI.md.
    topics: Annotated[list[Id], AfterValidator(_no_repeats)] = Field(
        default_factory=list, max_length=32
    )
    healing: HealingPolicy = HealingPolicy()


class Quota(Value):
    """Namespace limits; None means unlimited."""

    max_agents: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=0)
    max_memory_mb: int | None = Field(default=None, ge=0)
    max_fuel_per_s: int | None = Field(default=None, ge=0)


class Capacity(Value):
    """What a pod offers."""

    memory_mb: int = Field(ge=1)
    fuel_per_s: int = Field(ge=1)
    slots: int = Field(ge=1, le=1_000_000)
