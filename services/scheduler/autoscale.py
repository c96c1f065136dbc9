"""Predictive autoscaling: fold pods' metric samples and the log's agent events, then decide.

Pure and clock-free (every call is given `now`): `MetricsFold.observe()` folds one pod sample
(the JSON pods publish on `metrics_subject(pod, "agent")`), `Autoscaler.fold()` folds agent
events, and `Autoscaler.tick(now)` (called every `step_s`) feeds each autoscaled agent's demand
to its forecasters and returns the scale requests to send. `decide()` is the rule itself:

* capacity: one replica carries `target_rate` messages/s (or, when unset, its learned
  throughput, calls per busy second, times `target_utilization`) and `target_queue` waiting
  messages;
* wanted = ceil(forecast / capacity) per signal, the larger of the two, within
  [min_replicas, max_replicas];
* up as soon as wanted > current (so before the actual rate reaches capacity), once
  `cooldown_s` has passed since the last decision;
* down only after `scale_down_after_s` during which every tick wanted fewer, to the most any of
  those ticks wanted (and the cooldown has passed);
* a count outside the bounds (a policy changed, a hand scale) is corrected at once.

Agents scaled to zero are left alone: that is `swarm agent stop`, and with no replica there is
no demand to see.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from schemas import Envelope, events, healing
from schemas.specs import AutoscaleDecision, AutoscalePolicy, DemandForecast
from services.scheduler.forecast import Forecaster
from swarm.domain.dispatch import HandlerTable, unseen

Direction = Literal["up", "down", "bounds"]
#: Learned throughput needs this much busy time in a replica's counters to be believed.
MIN_BUSY_MS = 200.0


# --- metric samples ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    """One replica's counters in one pod sample. `t` is the pod's clock (seconds)."""

    agent_id: str
    replica_id: str
    pod_id: str
    state: str
    t: float
    received: int
    calls: int
    busy_ms: float
    mailbox: int
    task_queues: tuple[str, ...]
    #: When the sample was folded (the folder's clock), for staleness.
    seen_at: float


@dataclass(slots=True)
class ReplicaLoad:
    """What is known about one replica: its last sample and its message rate since the one
    before."""

    last: ReplicaSample
    #: Messages per second arriving, between the last two samples; None after the first.
    rate: float | None = None

    @property
    def service_rate(self) -> float | None:
        """Messages per busy second the replica has shown it can handle (its saturation
        throughput); None until it has been busy long enough to tell."""
        if self.last.busy_ms < MIN_BUSY_MS or self.last.calls == 0:
            return None
        return self.last.calls / (self.last.busy_ms / 1000.0)


class SampleError(ValueError):
    """A metrics message that is not a pod's agent sample."""


def parse_pod_sample(
    body: Mapping[str, Any], seen_at: float, *, subject: str | None = None
) -> list[ReplicaSample]:
    """The replicas of one pod sample; raises SampleError when it is not one, or, read from
    `subject`, names another pod than the one it was published under: a stack's NATS lets a
    pod publish metrics under its own id alone, so the subject says which pod runs the
    replicas (the task distributor takes their answers from that pod alone)."""
    try:
        pod_id = str(body["pod_id"])
        if subject is not None and subject.split(".")[2:3] != [pod_id]:
            raise SampleError(f"a sample of pod {pod_id!r} published on {subject}")
        t = float(body["time_ms"]) / 1000.0
        return [
            ReplicaSample(
                agent_id=str(r["agent_id"]),
                replica_id=str(r["replica_id"]),
                pod_id=pod_id,
                state=str(r.get("state", "")),
                t=t,
                received=int(r.get("received", 0)),
                calls=int(r.get("calls", 0)),
                busy_ms=float(r.get("busy_ms", 0.0)),
                mailbox=int(r.get("mailbox", 0)),
                task_queues=tuple(str(q) for q in r.get("task_queues", ())),
                seen_at=seen_at,
            )
            for r in body["replicas"]
        ]
    except SampleError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SampleError(f"not a pod agent sample: {exc!r}") from None


@dataclass(slots=True)
class MetricsFold:
    """Per-replica load from pod samples; replicas not heard of for `stale_after_s` are gone."""

    stale_after_s: float
    replicas: dict[str, ReplicaLoad] = field(default_factory=dict)

    def observe(
        self, body: Mapping[str, Any], seen_at: float, *, subject: str | None = None
    ) -> None:
        for sample in parse_pod_sample(body, seen_at, subject=subject):
            self.add(sample)

    def add(self, sample: ReplicaSample) -> None:
        known = self.replicas.get(sample.replica_id)
        rate: float | None = None
        if known is not None:
            dt = sample.t - known.last.t
            if dt <= 0:
                return  # a duplicate or reordered sample: the newer one is kept
            delta = sample.received - known.last.received
            # A counter that went back means the replica restarted: no rate from this pair.
            rate = delta / dt if delta >= 0 else None
        self.replicas[sample.replica_id] = ReplicaLoad(sample, rate)

    def prune(self, now: float) -> None:
        stale = [
            rid
            for rid, load in self.replicas.items()
            if now - load.last.seen_at > self.stale_after_s
        ]
        for rid in stale:
            del self.replicas[rid]

    def of_agent(self, agent_id: str, now: float) -> list[ReplicaLoad]:
        return self.by_agent(now).get(agent_id, [])

    def by_agent(self, now: float) -> dict[str, list[ReplicaLoad]]:
        """Fresh loads grouped by agent (one pass, for a tick over every agent)."""
        out: dict[str, list[ReplicaLoad]] = {}
        for load in self.replicas.values():
            if now - load.last.seen_at <= self.stale_after_s:
                out.setdefault(load.last.agent_id, []).append(load)
        return out


@dataclass(frozen=True, slots=True)
class Demand:
    """One agent's demand at one tick, summed over its reporting replicas."""

    rate: float
    queue: float
    reporting: int
    #: Median learned saturation throughput of one replica, None when not known yet.
    service_rate: float | None
    #: False while no replica has two samples yet: `rate` is then unknown, not zero.
    rated: bool = True
    #: When the newest of the samples was folded.
    newest: float = float("-inf")

    @classmethod
    def of(cls, loads: list[ReplicaLoad]) -> Demand:
        learned = [s for s in (load.service_rate for load in loads) if s is not None]
        return cls(
            rate=sum(load.rate or 0.0 for load in loads),
            queue=float(sum(load.last.mailbox for load in loads)),
            reporting=len(loads),
            service_rate=statistics.median(learned) if learned else None,
            rated=any(load.rate is not None for load in loads),
            newest=max((load.last.seen_at for load in loads), default=float("-inf")),
        )


# --- the rule ------------------------------------------------------------------------------------


@dataclass(slots=True)
class ScalingState:
    """What the rule remembers about one agent between ticks."""

    last_decision_at: float | None = None
    #: Since when every tick wanted fewer replicas, and the most any of them wanted.
    low_since: float | None = None
    low_peak: int = 0


def capacity_per_replica(policy: AutoscalePolicy, demand: Demand) -> float | None:
    if policy.target_rate is not None:
        return policy.target_rate
    if demand.service_rate is not None:
        return demand.service_rate * policy.target_utilization
    return None


def wanted(
    policy: AutoscalePolicy,
    rate: float,
    queue: float,
    capacity_rate: float | None,
    capacity_queue: float | None,
) -> int:
    """Replicas that carry `rate` and `queue`, within the policy's bounds."""
    need = 0
    if capacity_rate:
        need = max(need, math.ceil(rate / capacity_rate - 1e-9))
    if capacity_queue:
        need = max(need, math.ceil(queue / capacity_queue - 1e-9))
    return min(policy.max_replicas, max(policy.min_replicas, need))


def decide(
    policy: AutoscalePolicy,
    current: int,
    forecast: DemandForecast,
    state: ScalingState,
    now: float,
) -> AutoscaleDecision | None:
    """The decision for one agent at `now`, or None; updates `state` (the rule's memory)."""

    def decision(direction: Direction, replicas: int, reason: str) -> AutoscaleDecision:
        state.last_decision_at = now
        state.low_since = None
        return AutoscaleDecision(
            direction=direction,
            previous=current,
            replicas=replicas,
            reason=reason[:500],
            forecast=forecast,
        )

    if current < policy.min_replicas or current > policy.max_replicas:
        bounded = min(policy.max_replicas, max(policy.min_replicas, current))
        return decision(
            "bounds",
            bounded,
            f"{current} replicas outside [{policy.min_replicas}, {policy.max_replicas}]",
        )
    f = forecast
    if f.reporting == 0 or (f.capacity_rate is None and f.capacity_queue is None):
        state.low_since = None
        return None  # demand or capacity unknown: nothing to decide on
    cooled = state.last_decision_at is None or now - state.last_decision_at >= policy.cooldown_s
    # Up on the forecast (or the present, if it is higher: a forecast may lag a jump).
    up = wanted(
        policy,
        max(f.rate, f.rate_forecast),
        max(f.queue, f.queue_forecast),
        f.capacity_rate,
        f.capacity_queue,
    )
    if up > current:
        state.low_since = None
        if not cooled:
            return None
        return decision("up", up, _why(f, up, current, policy.horizon_s))
    if up == current:
        state.low_since = None
        return None
    # Down: only when both now and the forecast want fewer, for scale_down_after_s on end.
    if state.low_since is None:
        state.low_since, state.low_peak = now, up
        if policy.scale_down_after_s > 0:
            return None
    state.low_peak = max(state.low_peak, up)
    if now - state.low_since < policy.scale_down_after_s or not cooled:
        return None
    return decision(
        "down",
        state.low_peak,
        f"demand stayed within {state.low_peak} replicas for {now - state.low_since:.0f}s: "
        + _demand(f),
    )


def _demand(f: DemandForecast) -> str:
    parts = []
    if f.capacity_rate is not None:
        parts.append(
            f"rate {f.rate:.1f}/s, forecast {f.rate_forecast:.1f}/s "
            f"(capacity {f.capacity_rate:.1f}/s per replica)"
        )
    if f.capacity_queue is not None:
        parts.append(
            f"queue {f.queue:.0f}, forecast {f.queue_forecast:.0f} "
            f"(target {f.capacity_queue:.0f} per replica)"
        )
    return "; ".join(parts)


def _why(f: DemandForecast, up: int, current: int, horizon_s: float) -> str:
    return f"{up} replicas needed within {horizon_s:g}s, {current} run: " + _demand(f)


# --- per agent, from the log ---------------------------------------------------------------------


@dataclass(slots=True)
class ScaledAgent:
    agent_id: str
    namespace: str
    name: str
    desired: int
    policy: AutoscalePolicy | None
    state: ScalingState = field(default_factory=ScalingState)
    rate: Forecaster | None = None
    queue: Forecaster | None = None
    #: A scale request sent and not yet seen on the log: (replicas, sent at).
    pending: tuple[int, float] | None = None
    #: When the newest sample learned so far was folded.
    learned_at: float = float("-inf")

    def forecasters(self, step_s: float) -> tuple[Forecaster, Forecaster]:
        method = self.policy.method if self.policy else "holt"
        if self.rate is None or self.rate.method != method:
            self.rate = Forecaster(method, step_s)
        if self.queue is None or self.queue.method != method:
            self.queue = Forecaster(method, step_s)
        return self.rate, self.queue


@dataclass(frozen=True, slots=True)
class ScaleRequest:
    """An `agent.scale` to send, with the decision it carries."""

    agent_id: str
    namespace: str
    name: str
    decision: AutoscaleDecision


@dataclass(slots=True)
class Autoscaler:
    """Every autoscaled agent's policy, count and forecasters; `tick` decides for all of them."""

    step_s: float
    stale_after_s: float
    #: How long a sent request may stay unseen on the log before the agent is decided again.
    pending_timeout_s: float = 10.0
    applied_seq: int = 0
    agents: dict[str, ScaledAgent] = field(default_factory=dict)
    #: Published trust per agent (`agent.reputation_changed`) and the quarantined agents, for
    #: the task board (shared with it by the service).
    trust: dict[str, float] = field(default_factory=dict)
    quarantined: set[str] = field(default_factory=set)
    #: Where the log last placed each replica: replica id -> (agent id, pod id). Who may
    #: answer a task for it (a pod's samples say which replicas it runs, but a pod may say so
    #: of any replica; the Hive alone writes the log).
    placed: dict[str, tuple[str, str]] = field(default_factory=dict)
    metrics: MetricsFold = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = MetricsFold(self.stale_after_s)

    # -- folding the log --------------------------------------------------------------------------

    def fold(self, envelope: Envelope[Any], seq: int) -> None:
        handler = _HANDLERS.get(type(envelope.data))
        if unseen(self, seq) and handler is not None:
            handler(self, envelope.data)

    def advance(self, seq: int) -> None:
        self.applied_seq = max(self.applied_seq, seq)

    # -- deciding ---------------------------------------------------------------------------------

    def tick(self, now: float) -> list[ScaleRequest]:
        """Learn this step's demand of every autoscaled agent and decide; call every `step_s`."""
        self.metrics.prune(now)
        loads = self.metrics.by_agent(now)
        out: list[ScaleRequest] = []
        for agent in self.agents.values():
            policy = agent.policy
            if policy is None or not policy.enabled or agent.desired == 0:
                continue
            demand = Demand.of(loads.get(agent.agent_id, []))
            rate, queue = agent.forecasters(self.step_s)
            if demand.reporting and demand.newest > agent.learned_at:
                # Only fresh samples are learned (see Forecaster). A first sample has no rate
                # yet: learning it as 0 would fake a steep trend.
                agent.learned_at = demand.newest
                if demand.rated:
                    rate.learn(demand.rate, now)
                queue.learn(demand.queue, now)
            if agent.pending is not None:
                if now - agent.pending[1] < self.pending_timeout_s:
                    continue
                agent.pending = None  # rejected or lost: decide again from the log's count
            forecast = DemandForecast(
                method=policy.method,
                horizon_s=policy.horizon_s,
                rate=round(demand.rate, 3),
                rate_forecast=round(rate.forecast(policy.horizon_s), 3),
                queue=demand.queue,
                queue_forecast=round(queue.forecast(policy.horizon_s), 3),
                capacity_rate=_rounded(capacity_per_replica(policy, demand)),
                capacity_queue=policy.target_queue,
                reporting=demand.reporting,
            )
            decision = decide(policy, agent.desired, forecast, agent.state, now)
            if decision is None or decision.replicas == agent.desired:
                continue
            agent.pending = (decision.replicas, now)
            out.append(ScaleRequest(agent.agent_id, agent.namespace, agent.name, decision))
        return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


Handler = Callable[[Autoscaler, Any], None]
_HANDLERS: HandlerTable[Handler] = HandlerTable()
_on = _HANDLERS.on


@_on(events.AgentDeployed)
def _deployed(a: Autoscaler, e: events.AgentDeployed) -> None:
    a.agents[e.agent_id] = ScaledAgent(e.agent_id, e.namespace, e.name, e.replicas, e.autoscale)


@_on(events.AgentScaled)
def _scaled(a: Autoscaler, e: events.AgentScaled) -> None:
    agent = a.agents.get(e.agent_id)
    if agent is not None:
        agent.desired = e.replicas
        agent.pending = None


@_on(events.AgentAutoscaleChanged)
def _policy(a: Autoscaler, e: events.AgentAutoscaleChanged) -> None:
    agent = a.agents.get(e.agent_id)
    if agent is not None:
        agent.policy = e.autoscale
        agent.state = ScalingState()


@_on(events.ReplicaScheduled)
def _placed(a: Autoscaler, e: events.ReplicaScheduled) -> None:
    a.placed[e.replica_id] = (e.agent_id, e.pod_id)


@_on(events.ReplicaStopped)
@_on(events.ReplicaFailed)
def _gone(a: Autoscaler, e: events.ReplicaStopped | events.ReplicaFailed) -> None:
    # A replica stopped or given up on answers nothing more (one restarted after a crash keeps
    # its place until the log schedules it again): the map follows the replicas that are.
    a.placed.pop(e.replica_id, None)


@_on(events.AgentDeleted)
def _deleted(a: Autoscaler, e: events.AgentDeleted) -> None:
    for replica_id in [r for r, (agent_id, _) in a.placed.items() if agent_id == e.agent_id]:
        del a.placed[replica_id]
    a.agents.pop(e.agent_id, None)
    a.trust.pop(e.agent_id, None)
    a.quarantined.discard(e.agent_id)


@_on(healing.ReputationChanged)
def _trust(a: Autoscaler, e: healing.ReputationChanged) -> None:
    a.trust[e.agent_id] = e.trust


@_on(healing.AgentQuarantined)
def _quarantined(a: Autoscaler, e: healing.AgentQuarantined) -> None:
    a.quarantined.add(e.agent_id)


@_on(healing.AgentReleased)
def _released(a: Autoscaler, e: healing.AgentReleased) -> None:
    a.quarantined.discard(e.agent_id)


#: Payload types the autoscaler folds; anything else only advances `applied_seq`.
HANDLED: frozenset[type[Any]] = frozenset(_HANDLERS)

__all__ = [
    "HANDLED",
    "Autoscaler",
    "Demand",
    "MetricsFold",
    "ReplicaLoad",
    "ReplicaSample",
    "SampleError",
    "ScaleRequest",
    "ScaledAgent",
    "ScalingState",
    "capacity_per_replica",
    "decide",
    "parse_pod_sample",
    "wanted",
]
