"""Value objects shared by commands and events: agent specs, resources, quotas, capacity.

Every number here is finite and bounded above and below, and every string, list and map has a
size bound: a command that passes these models can be folded, priced and timed by plain Python
arithmetic without overflow, and its echo in an event stays within one NATS message. The bounds
are far beyond what a real deployment asks for; they appear in the exported JSON Schemas.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from schemas import names

Name = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$")]
"""A DNS-label-like name (namespaces, agents): lowercase, digits, inner dashes, <= 52 chars."""

Id = Annotated[str, Field(pattern=names.TOKEN_PATTERN)]
"""An identifier that may stand in a subject token."""

#: What a user may do in a namespace, each role including the ones before it: `viewer` reads,
#: `operator` runs agents (deploy, scale, rollout, stop, delete, quarantine, ...), `admin` also
#: sets the namespace's quota and who may act in it. `swarm.domain.policy.check_access` holds
#: the rule; these are the names.
AccessRole = Literal["viewer", "operator", "admin"]
ACCESS_ROLES: tuple[AccessRole, ...] = ("viewer", "operator", "admin")

Version = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

#: Largest module that may travel inline in a command; bigger ones go to the object store.
INLINE_MODULE_MAX_BYTES = 256 * 1024
#: Its base64 text, which is checked for length before it is decoded.
INLINE_MODULE_MAX_CHARS = 4 * -(-INLINE_MODULE_MAX_BYTES // 3)

_MIB = 1024 * 1024
#: Upper bounds of the per-call sandbox limits and of an agent's key-value state.
MAX_DEADLINE_MS = 60_000
MAX_FUEL_PER_CALL = 10**12
MAX_STATE_BYTES = 256 * _MIB
MAX_STATE_KEYS = 1_000_000

# --- Bounds of numbers ---------------------------------------------------------------------------
# Sums over every replica of a namespace or a pod stay far inside int64 and float64 (the
# scheduler prices in numpy), and every duration fits a `timedelta` added to now.

#: Memory one replica may reserve, and memory one pod may offer (16 TiB: the largest machines).
MAX_REPLICA_MEMORY_MB = 65_536
MAX_POD_MEMORY_MB = 16 * _MIB
#: Fuel per second one replica may reserve or one pod may offer.
MAX_FUEL_PER_S = 10**15
#: New-version replicas a rollout may start beyond the desired count at once.
MAX_SURGE = 1000
#: Replicas one pod may run at once.
MAX_POD_SLOTS = 1_000_000
#: A pod's relative energy cost per unit of work, and a bid per resource unit.
MAX_ENERGY_COST = 1e6
MAX_PRICE = 1e6
#: A pod's heartbeat lease: below half a second a pod could not beat often enough.
MIN_LEASE_S = 0.5
MAX_LEASE_S = 3600.0
#: Time windows, cooldowns and look-backs of policies (one week), and a restart backoff (a day).
MAX_WINDOW_S = 7 * 86_400.0
MAX_BACKOFF_S = 86_400.0
#: Namespace quota limits (a quota above these is no limit in practice; leave it unset).
MAX_QUOTA_AGENTS = 1_000_000
MAX_QUOTA_REPLICAS = 10**9
MAX_QUOTA_MEMORY_MB = 10**12
MAX_QUOTA_FUEL_PER_S = 10**18
#: Message rates and queue depths the autoscaler reports (per second, messages).
MAX_RATE = 1e15
#: Log sequences, Raft terms and other counters: int64, what every client language can hold.
MAX_INT64 = 2**63 - 1

# --- Bounds of sizes -----------------------------------------------------------------------------

#: Free text the Hive writes into an event (a reason, possibly quoting a command's reason).
MAX_REASON_CHARS = 8192
#: Labels on a pod or an agent, and the length of each key and value.
MAX_LABELS = 64
MAX_LABEL_KEY_CHARS = 128
MAX_LABEL_VALUE_CHARS = 256
#: Environment variables of an agent.
MAX_ENV_VARS = 64
MAX_ENV_KEY_CHARS = 256
MAX_ENV_VALUE_CHARS = 4096
#: A zone name, a command type, a snapshot reference, a scheduling policy's name.
MAX_ZONE_CHARS = 64
MAX_TYPE_CHARS = 256
MAX_SNAPSHOT_CHARS = 256
MAX_POLICY_CHARS = 64


def cut_to(limit: int) -> Callable[[object], object]:
    """A before-validator cutting text to `limit` characters (the last one then "…").

    For free text the Hive writes itself (reasons, a rejection's messages): a reason that grew
    beyond its bound (it may quote a command's values) is shortened rather than refused, so the
    event that carries it can always be written. Sender input is never cut: it is refused.
    """

    def cut(value: object) -> object:
        if isinstance(value, str) and len(value) > limit:
            return value[: limit - 1] + "…"
        return value

    return cut


LabelKey = Annotated[str, Field(max_length=MAX_LABEL_KEY_CHARS)]
LabelValue = Annotated[str, Field(max_length=MAX_LABEL_VALUE_CHARS)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]
Zone = Annotated[str, Field(max_length=MAX_ZONE_CHARS)]
Reason = Annotated[
    str, BeforeValidator(cut_to(MAX_REASON_CHARS)), Field(max_length=MAX_REASON_CHARS)
]
"""Why the Hive did something, in an event: cut to `MAX_REASON_CHARS` (see `cut_to`)."""
SnapshotRef = Annotated[str, Field(max_length=MAX_SNAPSHOT_CHARS)]
PolicyName = Annotated[str, Field(max_length=MAX_POLICY_CHARS)]
Seconds = Annotated[float, Field(ge=0, le=MAX_WINDOW_S)]
"""A duration of a policy: zero or more, at most `MAX_WINDOW_S`."""
#: Numbers a command asks for and the event that records it echoes, bounded once for both.
Surge = Annotated[int, Field(ge=1, le=MAX_SURGE)]
EnergyCost = Annotated[float, Field(ge=0, le=MAX_ENERGY_COST)]
LeaseSeconds = Annotated[float, Field(ge=MIN_LEASE_S, le=MAX_LEASE_S)]


class Value(BaseModel):
    # allow_inf_nan=False: JSON's non-standard Infinity/NaN (which pydantic's parser reads) and
    # literals like 1e400 (which parse to inf) are refused like any out-of-range number.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


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
        raise ValueError("topics and task queues must not repeat")
    return values


class ModuleRef(Value):
    """Where an agent's WebAssembly module is: in the object store by sha256, or inline."""

    sha256: Sha256 | None = None
    inline: (
        Annotated[str, Field(max_length=INLINE_MODULE_MAX_CHARS), AfterValidator(_check_base64)]
        | None
    ) = None
    kind: Literal["core", "component"] = "core"

    @model_validator(mode="after")
    def _exactly_one(self) -> ModuleRef:
        if (self.sha256 is None) == (self.inline is None):
            raise ValueError("give exactly one of module.sha256 or module.inline")
        return self


class Resources(Value):
    """What one replica of an agent reserves on the pod that runs it."""

    memory_mb: int = Field(default=64, ge=1, le=MAX_REPLICA_MEMORY_MB)
    fuel_per_s: int = Field(default=10_000_000, ge=1, le=MAX_FUEL_PER_S)


#: Crashes within a window before a replica is failed; `agent.replica_crashed` counts at most
#: one more than this (the crash that fails it).
MAX_RESTARTS = 1000


class RestartPolicy(Value):
    """Crash handling: exponential backoff, and `failed` after too many crashes in a window."""

    max_restarts: int = Field(default=5, ge=0, le=MAX_RESTARTS)
    window_s: float = Field(default=300.0, gt=0, le=MAX_WINDOW_S)
    backoff_s: float = Field(default=1.0, gt=0, le=MAX_BACKOFF_S)
    max_backoff_s: float = Field(default=60.0, gt=0, le=MAX_BACKOFF_S)


class Limits(Value):
    """Per-call sandbox limits (the runtime enforces them)."""

    #: Wall-clock time one call may take. Bounded so that a replica cannot hold a pod's worker
    #: for minutes on end (the pod also caps how many workers one agent may hold at once).
    deadline_ms: int = Field(default=1000, ge=1, le=MAX_DEADLINE_MS)
    fuel_per_call: int = Field(default=100_000_000, ge=1, le=MAX_FUEL_PER_CALL)
    #: Total key-value state of one replica (keys plus values, in bytes) and its number of keys.
    #: A write beyond either is refused with LIMIT at the host call (runtime/ABI.md), so the
    #: state stays what a snapshot can hold. A pod may bound both lower (`SWARM_POD_MAX_STATE_*`).
    state_bytes: int = Field(default=4 * _MIB, ge=0, le=MAX_STATE_BYTES)
    state_keys: int = Field(default=4096, ge=0, le=MAX_STATE_KEYS)


#: Bounds of `AgentSpec.priority` (and so of every effective priority).
MAX_PRIORITY = 1000

#: Named priority classes and the number each stands for (higher wins; a replica may only be
#: preempted for a strictly higher number). `AgentSpec.priority` takes any number in
#: [-1000, 1000]; `placement.priority_class` names one of these instead.
PRIORITY_CLASSES: dict[str, int] = {
    "best-effort": -100,
    "low": -10,
    "normal": 0,
    "high": 100,
    "critical": 1000,
}
PriorityClass = Literal["best-effort", "low", "normal", "high", "critical"]


class Placement(Value):
    """How an agent's replicas take part in the scheduler's market (all optional).

    `max_price` is the bid: the most the agent pays per resource unit (64 MB) at the posted
    price of a pod; None bids without a cap. `node_selector` and `zones` are hard constraints
    (a pod must carry every label and, when `zones` is given, be in one of them);
    `avoid_zones` is zone anti-affinity (never those zones).
    """

    priority_class: PriorityClass | None = None
    max_price: float | None = Field(default=None, gt=0, le=MAX_PRICE)
    node_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=16)
    zones: list[Zone] = Field(default_factory=list, max_length=16)
    avoid_zones: list[Zone] = Field(default_factory=list, max_length=16)


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
    window_s: float = Field(default=300.0, gt=0, le=MAX_WINDOW_S)
    on_low_trust: HealingAction = "quarantine"
    #: 0 disables the trust trigger.
    min_trust: float = Field(default=0.2, ge=0, le=1)
    rollback_on_regression: bool = True
    regression_s: Seconds = 600.0
    cooldown_s: Seconds = 30.0
    #: Only a confirmed critical finding stops the agent (quarantine): one whose evidence has at
    #: least two signals beyond their thresholds, or that comes within `confirm_s` of another
    #: finding of at least warning severity about the same agent. False: the first critical
    #: finding acts. Warnings never stop an agent, whatever the trigger.
    confirm: bool = True
    confirm_s: float = Field(default=300.0, gt=0, le=MAX_WINDOW_S)


HostPattern = Annotated[
    str,
    Field(
        pattern=r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        max_length=253,
    ),
]
"""A lowercase host name, or `*.` and one: any name below it (not the name itself)."""


class Network(Value):
    """What the `net` capability may reach (runtime/ABI.md, "Capabilities").

    `allow` lists host names, exact (`api.example.com`) or wildcards (`*.example.org`: any
    name below example.org, not example.org itself); the host of each request must match one.
    Empty: any public host. Non-public addresses stay refused unless the pod allows them,
    whatever this says.
    """

    allow: list[HostPattern] = Field(default_factory=list, max_length=64)


class AgentSpec(Value):
    """Everything that defines one version of an agent."""

    version: Version
    module: ModuleRef
    resources: Resources = Resources()
    limits: Limits = Limits()
    restart: RestartPolicy = RestartPolicy()
    #: Command types this agent may issue on its own (its autonomy bounds), e.g.
    #: ["swarm.cmd.agent.scale"]; anything else it sends is rejected with rule "autonomy".
    autonomy: list[Annotated[str, Field(max_length=MAX_TYPE_CHARS)]] = Field(
        default_factory=list, max_length=64
    )
    #: Host capabilities beyond the default sandbox ("fs", "net", "env").
    capabilities: list[Literal["fs", "net", "env"]] = Field(default_factory=list, max_length=8)
    env: dict[
        Annotated[str, Field(max_length=MAX_ENV_KEY_CHARS)],
        Annotated[str, Field(max_length=MAX_ENV_VALUE_CHARS)],
    ] = Field(default_factory=dict, max_length=MAX_ENV_VARS)
    #: Hosts the "net" capability may reach (default: any public host).
    network: Network = Network()
    labels: Labels = Field(default_factory=dict)
    priority: int = Field(default=0, ge=-MAX_PRIORITY, le=MAX_PRIORITY)
    #: Market bid, priority class, constraints and affinities (see `Placement`).
    placement: Placement = Placement()
    #: Topics the agent subscribes to (subject tokens, at most 32, no repeats; topic names are
    #: global, not per namespace): every message published on one of them, e.g. by another
    #: agent's `send("topic:<name>", ...)`, is handled once by one of this agent's replicas,
    #: fire-and-forget (no reply; dropped when that replica's mailbox is full). See ABI.md.
    topics: Annotated[list[Id], AfterValidator(_no_repeats)] = Field(
        default_factory=list, max_length=32
    )
    #: Named task queues the agent takes work from (subject tokens, at most 32, no repeats;
    #: global like topics): each task sent to `swarm.task.<queue>` is handed by the scheduler's
    #: distributor to the one replica, among all agents taking that queue, with the most spare
    #: capacity and the best reputation, and acknowledged once that replica answered.
    task_queues: Annotated[list[Id], AfterValidator(_no_repeats)] = Field(
        default_factory=list, max_length=32
    )

    @model_validator(mode="after")
    def _one_priority(self) -> AgentSpec:
        named = self.placement.priority_class
        if named is not None and self.priority not in (0, PRIORITY_CLASSES[named]):
            raise ValueError(
                f"priority {self.priority} contradicts placement.priority_class {named!r} "
                f"({PRIORITY_CLASSES[named]}); give one of them"
            )
        return self

    @property
    def effective_priority(self) -> int:
        """The number preemption compares: the priority class's when one is named."""
        named = self.placement.priority_class
        return PRIORITY_CLASSES[named] if named is not None else self.priority

    healing: HealingPolicy = HealingPolicy()


class Quota(Value):
    """Namespace limits; None means unlimited."""

    max_agents: int | None = Field(default=None, ge=0, le=MAX_QUOTA_AGENTS)
    max_replicas: int | None = Field(default=None, ge=0, le=MAX_QUOTA_REPLICAS)
    max_memory_mb: int | None = Field(default=None, ge=0, le=MAX_QUOTA_MEMORY_MB)
    max_fuel_per_s: int | None = Field(default=None, ge=0, le=MAX_QUOTA_FUEL_PER_S)
    #: Self-healing's budget: how many agents of the namespace it may stop (quarantine, roll
    #: back) within `healing_window_s`, so that a wave of false findings cannot take a whole
    #: namespace offline. Beyond it, the action is recorded as skipped. None: no cap.
    max_healing_stops: int | None = Field(default=3, ge=0, le=MAX_QUOTA_AGENTS)
    healing_window_s: float = Field(default=600.0, gt=0, le=MAX_WINDOW_S)


class Capacity(Value):
    """What a pod offers."""

    memory_mb: int = Field(ge=1, le=MAX_POD_MEMORY_MB)
    fuel_per_s: int = Field(ge=1, le=MAX_FUEL_PER_S)
    slots: int = Field(ge=1, le=MAX_POD_SLOTS)


# --- Autoscaling ---------------------------------------------------------------------------------

#: Replicas of one agent; bounded so that one decision fits in one atomic append.
MAX_REPLICAS = 400
#: A desired replica count, as a command asks for it and its event records it.
Replicas = Annotated[int, Field(ge=0, le=MAX_REPLICAS)]

ForecastMethod = Literal["holt", "ewma"]
#: Per-replica targets divide the demand, so they are bounded away from zero: demand up to
#: `MAX_RATE` over `MIN_TARGET` still is a finite number of replicas (then capped by policy).
MIN_TARGET = 0.001
MAX_TARGET = 1e9
MAX_HORIZON_S = 3600.0


class AutoscalePolicy(Value):
    """How the scheduler's autoscaler sizes an agent (like a Kubernetes HPA, beside the spec).

    Demand is forecast `horizon_s` ahead (time to start a replica plus a margin) from the message
    rate and mailbox depth the pods report; the agent is scaled up as soon as the forecast needs
    more replicas than run, and down only after `scale_down_after_s` of demand below what one
    replica fewer would carry. At least `cooldown_s` passes between two decisions.
    """

    enabled: bool = True
    min_replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    max_replicas: int = Field(default=10, ge=1, le=MAX_REPLICAS)
    #: Messages per second one replica should carry; None: learned from the replicas' observed
    #: service time (calls per busy second) times `target_utilization`.
    target_rate: float | None = Field(default=None, ge=MIN_TARGET, le=MAX_TARGET)
    #: Mailbox depth per replica to aim for; None: queue depth does not size the agent.
    target_queue: float | None = Field(default=None, ge=MIN_TARGET, le=MAX_TARGET)
    #: Share of a replica's learned throughput to plan for (headroom before saturation).
    target_utilization: float = Field(default=0.8, ge=0.01, le=1)
    cooldown_s: float = Field(default=30.0, ge=0, le=86_400)
    scale_down_after_s: float = Field(default=120.0, ge=0, le=86_400)
    horizon_s: float = Field(default=30.0, gt=0, le=MAX_HORIZON_S)
    #: `holt`: Holt's linear trend (level + trend); `ewma`: level only (no trend).
    method: ForecastMethod = "holt"

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalePolicy:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self


class DemandForecast(Value):
    """What the autoscaler saw and predicted for one agent when it decided."""

    method: ForecastMethod
    horizon_s: float = Field(gt=0, le=MAX_HORIZON_S)
    #: Messages per second arriving at all replicas now, and forecast `horizon_s` ahead.
    rate: float = Field(ge=0, le=MAX_RATE)
    rate_forecast: float = Field(ge=0, le=MAX_RATE)
    #: Messages waiting in all mailboxes now, and forecast.
    queue: float = Field(ge=0, le=MAX_RATE)
    queue_forecast: float = Field(ge=0, le=MAX_RATE)
    #: What one replica is planned to carry (None: that signal did not size the agent).
    capacity_rate: float | None = Field(default=None, ge=0, le=MAX_RATE)
    capacity_queue: float | None = Field(default=None, ge=0, le=MAX_RATE)
    #: Replicas whose metrics went into the sample.
    reporting: int = Field(default=0, ge=0, le=MAX_INT64)


class AutoscaleDecision(Value):
    """Why the autoscaler asked for a replica count: carried by `agent.scale` and `agent.scaled`."""

    direction: Literal["up", "down", "bounds"]
    previous: int = Field(ge=0, le=MAX_REPLICAS)
    replicas: int = Field(ge=0, le=MAX_REPLICAS)
    reason: str = Field(max_length=500)
    forecast: DemandForecast
