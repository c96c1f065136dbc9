"""`evolve(state, seq, event) -> state`: fold one event into the Hive's state.

Deterministic and free of I/O, so every replica, the timeline's time travel and the tests get the
same state from the same events. It updates `state` in place and returns it: copying a large
state for every event would make folding a long log quadratic. Folding is idempotent by stream
sequence: an event at or below `applied_seq` changes nothing.

One function folds what is on the log: `fold_raw` takes the bytes stored at a sequence, decodes
them and evolves, and never raises. An entry it cannot fold (not a Swarm event, or an event about
something the state does not hold) changes nothing but is recorded in the state as a
`FoldFailure`, so every replica, time travel and `swarm timeline verify` see the same failure and
folding goes on. The Hive's leader folds what it is about to write with `fold_checked`, which
raises instead, so it refuses the command rather than write an event that would not fold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from schemas import REGISTRY, Envelope, events, healing, market, names, observer, webhooks
from schemas.machine import PodAnomalyDetected
from swarm.domain import placement, reputation
from swarm.domain.dispatch import HandlerTable
from swarm.domain.placement import PLACED, TERMINAL, ReplicaPhase
from swarm.domain.state import (
    KNOWN_SNAPSHOTS,
    RECENT_ACTIONS,
    RECENT_ANOMALIES,
    RECENT_FOLD_FAILURES,
    RECENT_POD_ANOMALIES,
    Agent,
    Anomaly,
    FoldFailure,
    Grant,
    HealingRecord,
    HiveState,
    KnownSnapshot,
    Namespace,
    Pod,
    PodAnomaly,
    Quarantine,
    Replica,
    Rollout,
    Webhook,
)

Handler = Callable[[HiveState, Any, Envelope[Any], int], None]
_HANDLERS: HandlerTable[Handler] = HandlerTable()
_on = _HANDLERS.on


class FoldRefused(Exception):
    """The event names something the state does not hold (or repeats what must be unique); it
    was not applied, and nothing of the state changed."""


def evolve(state: HiveState, seq: int, envelope: Envelope[Any]) -> HiveState:
    """Apply the event stored at stream sequence `seq`; events the Hive does not fold (outcomes,
    events of later Swarm versions it does not know) only advance `applied_seq`.

    Raises `FoldRefused`, with the state untouched, for an event that names an agent, replica or
    pod the state does not hold; handlers can then index without checking.
    """
    if seq <= state.applied_seq:
        return state
    handler = _HANDLERS.get(type(envelope.data))
    if handler is not None:
        problem = _missing(state, envelope.data)
        if problem is not None:
            raise FoldRefused(problem)
        handler(state, envelope.data, envelope, seq)
    extensions = envelope.model_extra
    seal = extensions.get(names.EXTENSION_HIVE_SEAL) if extensions else None
    if isinstance(seal, str):
        state.chain_head = seal
    state.applied_seq = seq
    return state


#: Events about one replica of an agent the state must hold (others create it or only note it).
_REPLICA_EVENTS = (
    events.ReplicaScheduled,
    events.ReplicaStarting,
    events.ReplicaRunning,
    events.ReplicaCrashed,
    events.ReplicaFailed,
    events.ReplicaStopping,
    events.ReplicaStopped,
)


def _missing(s: HiveState, e: Any) -> str | None:
    """Why `e` cannot be folded into `s`, checked before any handler changes anything."""
    if isinstance(e, events.AgentDeployed):
        if e.agent_id in s.agents:
            return f"agent {e.agent_id} exists already"
        if (e.namespace, e.name) in s.by_name:
            return f"agent {e.namespace}/{e.name} exists already"
        return None
    agent_id = getattr(e, "agent_id", None)
    if isinstance(agent_id, str):
        agent = s.agents.get(agent_id)
        if agent is None:
            return f"agent {agent_id} is not known"
        if isinstance(e, _REPLICA_EVENTS) and e.replica_id not in agent.replicas:
            return f"replica {e.replica_id} of agent {agent_id} is not known"
    if isinstance(e, events.ReplicaScheduled | events.PodLost) and e.pod_id not in s.pods:
        return f"pod {e.pod_id} is not known"
    return None


# --- namespaces ----------------------------------------------------------------------------------


@_on(events.NamespaceCreated)
def _namespace_created(
    s: HiveState, e: events.NamespaceCreated, env: Envelope[Any], seq: int
) -> None:
    s.namespaces[e.name] = Namespace(e.name, e.quota, last_seq=seq)


@_on(events.NamespaceUpdated)
def _namespace_updated(
    s: HiveState, e: events.NamespaceUpdated, env: Envelope[Any], seq: int
) -> None:
    ns = s.namespaces.setdefault(e.name, Namespace(e.name))
    ns.quota = e.quota
    ns.last_seq = seq


# --- access --------------------------------------------------------------------------------------


@_on(events.AccessGranted)
def _access_granted(s: HiveState, e: events.AccessGranted, env: Envelope[Any], seq: int) -> None:
    kept = tuple(g for g in s.grants if (g.user, g.namespace) != (e.user, e.namespace))
    s.grants = (*kept, Grant(e.user, e.namespace, e.role))
    s.access_seq[e.user] = seq


@_on(events.AccessRevoked)
def _access_revoked(s: HiveState, e: events.AccessRevoked, env: Envelope[Any], seq: int) -> None:
    s.grants = tuple(g for g in s.grants if (g.user, g.namespace) != (e.user, e.namespace))
    s.access_seq[e.user] = seq


# --- agents --------------------------------------------------------------------------------------


def _account(s: HiveState, agent: Agent, sign: int) -> None:
    """Add (+1) or remove (-1) the agent's demand from its namespace's usage."""
    if agent.deleted:
        return
    usage = s.namespaces.setdefault(agent.namespace, Namespace(agent.namespace)).usage
    usage.agents += sign
    usage.replicas += sign * agent.replicas_desired
    usage.memory_mb += sign * agent.replicas_desired * agent.spec.resources.memory_mb
    usage.fuel_per_s += sign * agent.replicas_desired * agent.spec.resources.fuel_per_s


def _agent(s: HiveState, agent_id: str, seq: int) -> Agent:
    agent = s.agents[agent_id]
    agent.last_seq = seq
    return agent


@_on(events.AgentDeployed)
def _deployed(s: HiveState, e: events.AgentDeployed, env: Envelope[Any], seq: int) -> None:
    agent = Agent(
        agent_id=e.agent_id,
        namespace=e.namespace,
        name=e.name,
        spec=e.spec,
        replicas_desired=e.replicas,
        versions={e.spec.version: e.spec},
        history=[e.spec.version],
        created_at=env.time,
        last_seq=seq,
        autoscale=e.autoscale,
    )
    s.agents[e.agent_id] = agent
    s.by_name[agent.key] = e.agent_id
    _account(s, agent, +1)


@_on(events.AgentScaled)
def _scaled(s: HiveState, e: events.AgentScaled, env: Envelope[Any], seq: int) -> None:
    agent = _agent(s, e.agent_id, seq)
    _account(s, agent, -1)
    agent.replicas_desired = e.replicas
    _account(s, agent, +1)


@_on(events.AgentRolloutStarted)
def _rollout_started(
    s: HiveState, e: events.AgentRolloutStarted, env: Envelope[Any], seq: int
) -> None:
    agent = _agent(s, e.agent_id, seq)
    _account(s, agent, -1)
    agent.spec = e.spec
    _account(s, agent, +1)
    agent.versions[e.spec.version] = e.spec
    if e.spec.version in agent.history:
        agent.history.remove(e.spec.version)
    agent.history.append(e.spec.version)
    agent.rollout = Rollout(e.spec.version, e.from_version, e.max_surge, e.rollback)


@_on(events.AgentRolloutCompleted)
def _rollout_completed(
    s: HiveState, e: events.AgentRolloutCompleted, env: Envelope[Any], seq: int
) -> None:
    _agent(s, e.agent_id, seq).rollout = None


@_on(events.AgentStatusChanged)
def _status(s: HiveState, e: events.AgentStatusChanged, env: Envelope[Any], seq: int) -> None:
    agent = _agent(s, e.agent_id, seq)
    agent.status = e.status
    agent.status_reason = e.reason
    if e.status == "running":
        agent.ever_running = True


@_on(events.AgentDeleted)
def _deleted(s: HiveState, e: events.AgentDeleted, env: Envelope[Any], seq: int) -> None:
    agent = _agent(s, e.agent_id, seq)
    _account(s, agent, -1)
    agent.deleted = True
    agent.replicas_desired = 0
    if s.by_name.get(agent.key) == agent.agent_id:
        del s.by_name[agent.key]
    _forget_if_gone(s, agent)


# --- replicas ------------------------------------------------------------------------------------


def _release(s: HiveState, agent: Agent, replica: Replica) -> None:
    """Give the replica's reservation back to its pod."""
    if replica.pod_id is None or replica.phase not in PLACED:
        return
    pod = s.pods.get(replica.pod_id)
    if pod is not None:
        spec = placement.size_of(agent.versions, replica.version, agent.spec)
        placement.release(pod, (agent.agent_id, replica.replica_id), spec.resources)


def _move(s: HiveState, agent: Agent, replica: Replica, phase: ReplicaPhase, reason: str) -> None:
    if phase not in PLACED:
        _release(s, agent, replica)
    replica.phase = phase
    replica.reason = reason


def _forget_if_gone(s: HiveState, agent: Agent) -> None:
    """A deleted agent leaves the state once none of its replicas holds resources."""
    if agent.deleted and all(r.phase in TERMINAL for r in agent.replicas.values()):
        del s.agents[agent.agent_id]


@_on(events.ReplicaRequested)
def _replica_requested(
    s: HiveState, e: events.ReplicaRequested, env: Envelope[Any], seq: int
) -> None:
    agent = _agent(s, e.agent_id, seq)
    replica = agent.replicas.get(e.replica_id)
    if replica is None:
        replica = agent.replicas[e.replica_id] = Replica(e.replica_id, e.version)
        agent.next_replica += 1
    _move(s, agent, replica, "requested", e.reason)
    replica.version = e.version
    replica.pod_id = None
    replica.restart_at = None
    replica.snapshot = e.snapshot


@_on(events.ReplicaScheduled)
def _replica_scheduled(
    s: HiveState, e: events.ReplicaScheduled, env: Envelope[Any], seq: int
) -> None:
    agent = _agent(s, e.agent_id, seq)
    replica = agent.replicas[e.replica_id]
    replica.phase = "scheduled"
    replica.reason = e.reason
    replica.pod_id = e.pod_id
    spec = placement.size_of(agent.versions, replica.version, agent.spec)
    placement.reserve(s.pods[e.pod_id], (agent.agent_id, replica.replica_id), spec.resources)


@_on(events.ReplicaStarting)
def _replica_starting(
    s: HiveState, e: events.ReplicaStarting, env: Envelope[Any], seq: int
) -> None:
    replica = _agent(s, e.agent_id, seq).replicas[e.replica_id]
    replica.phase = "starting"
    replica.reason = f"starting on {e.pod_id}"
    if e.snapshot is not None:
        replica.snapshot = e.snapshot


@_on(events.ReplicaRunning)
def _replica_running(s: HiveState, e: events.ReplicaRunning, env: Envelope[Any], seq: int) -> None:
    replica = _agent(s, e.agent_id, seq).replicas[e.replica_id]
    replica.phase = "running"
    replica.reason = f"running on {e.pod_id}"


@_on(events.ReplicaCrashed)
def _replica_crashed(s: HiveState, e: events.ReplicaCrashed, env: Envelope[Any], seq: int) -> None:
    agent = _agent(s, e.agent_id, seq)
    replica = agent.replicas[e.replica_id]
    _move(s, agent, replica, "crashed", e.reason)
    replica.crashes.append(env.time)
    replica.restart_at = e.restart_at
    if e.snapshot is not None:
        replica.snapshot = e.snapshot


@_on(events.ReplicaFailed)
def _replica_failed(s: HiveState, e: events.ReplicaFailed, env: Envelope[Any], seq: int) -> None:
    agent = _agent(s, e.agent_id, seq)
    _move(s, agent, agent.replicas[e.replica_id], "failed", e.reason)
    agent.replicas[e.replica_id].restart_at = None
    _forget_if_gone(s, agent)


@_on(events.ReplicaStopping)
def _replica_stopping(
    s: HiveState, e: events.ReplicaStopping, env: Envelope[Any], seq: int
) -> None:
    agent = _agent(s, e.agent_id, seq)
    replica = agent.replicas[e.replica_id]
    phase = placement.stopping_phase(replica.phase)
    _move(s, agent, replica, phase, e.reason)
    if phase == "stopped":
        _forget_if_gone(s, agent)


@_on(events.ReplicaStopped)
def _replica_stopped(s: HiveState, e: events.ReplicaStopped, env: Envelope[Any], seq: int) -> None:
    agent = _agent(s, e.agent_id, seq)
    replica = agent.replicas[e.replica_id]
    _move(s, agent, replica, "stopped", e.reason)
    if e.snapshot is not None:
        replica.snapshot = e.snapshot
    _forget_if_gone(s, agent)


# --- pods ----------------------------------------------------------------------------------------


@_on(events.PodRegistered)
def _pod_registered(s: HiveState, e: events.PodRegistered, env: Envelope[Any], seq: int) -> None:
    pod = s.pods.get(e.pod_id)
    if pod is None:
        s.pods[e.pod_id] = Pod(
            e.pod_id,
            e.capacity,
            dict(e.labels),
            e.zone,
            e.energy_cost,
            e.lease_s,
            registered_at=env.time,
            last_seq=seq,
        )
        return
    pod.capacity = e.capacity
    pod.labels = dict(e.labels)
    pod.zone = e.zone
    pod.energy_cost = e.energy_cost
    pod.lease_s = e.lease_s
    pod.status = "ready"
    pod.registered_at = env.time
    pod.last_seq = seq


@_on(events.PodLost)
def _pod_lost(s: HiveState, e: events.PodLost, env: Envelope[Any], seq: int) -> None:
    pod = s.pods[e.pod_id]
    pod.status = "lost"
    pod.last_seq = seq


# --- observer findings ---------------------------------------------------------------------------


@_on(observer.AnomalyDetected)
def _anomaly(s: HiveState, e: observer.AnomalyDetected, env: Envelope[Any], seq: int) -> None:
    agent = _agent(s, e.agent_id, seq)
    agent.anomalies.append(Anomaly(e.anomaly_id, e.kind, e.severity, e.score, env.time))
    del agent.anomalies[:-RECENT_ANOMALIES]


# --- autoscaling ---------------------------------------------------------------------------------


@_on(events.AgentAutoscaleChanged)
def _autoscale_changed(
    s: HiveState, e: events.AgentAutoscaleChanged, env: Envelope[Any], seq: int
) -> None:
    _agent(s, e.agent_id, seq).autoscale = e.autoscale


# --- market: priority preemption -----------------------------------------------------------------


@_on(market.ReplicaPreempted)
def _replica_preempted(
    s: HiveState, e: market.ReplicaPreempted, env: Envelope[Any], seq: int
) -> None:
    """The record only: the `replica_requested` that follows moves the replica off its pod."""
    replica = _agent(s, e.agent_id, seq).replicas.get(e.replica_id)
    if replica is not None:
        replica.reason = f"preempted by {e.by_replica_id}"


# --- webhooks ------------------------------------------------------------------------------------


@_on(webhooks.WebhookAdded)
def _webhook_added(s: HiveState, e: webhooks.WebhookAdded, env: Envelope[Any], seq: int) -> None:
    s.webhooks[e.webhook_id] = Webhook(
        webhook_id=e.webhook_id,
        url=e.url,
        filter=e.filter,
        max_attempts=e.max_attempts,
        secret_fingerprint=e.secret_fingerprint,
        description=e.description,
        created_at=env.time,
        added_seq=seq,
        last_seq=seq,
    )


def _webhook(s: HiveState, webhook_id: str, seq: int) -> Webhook | None:
    """The subscription this event is about, its last sequence moved to the event's (None: the
    state does not hold it, and the event changes nothing)."""
    hook = s.webhooks.get(webhook_id)
    if hook is not None:
        hook.last_seq = seq
    return hook


@_on(webhooks.WebhookRemoved)
def _webhook_removed(
    s: HiveState, e: webhooks.WebhookRemoved, env: Envelope[Any], seq: int
) -> None:
    hook = _webhook(s, e.webhook_id, seq)
    if hook is not None:
        hook.removed = True


@_on(webhooks.WebhookRedeliveryRequested)
def _webhook_redelivery(
    s: HiveState, e: webhooks.WebhookRedeliveryRequested, env: Envelope[Any], seq: int
) -> None:
    _webhook(s, e.webhook_id, seq)  # the dispatcher acts on it; the Hive notes the position


# --- folding stored bytes ------------------------------------------------------------------------


def fold_checked(state: HiveState, seq: int, raw: bytes) -> Envelope[Any]:
    """Decode the bytes stored (or about to be stored) at `seq` and evolve `state` with them.

    Raises whatever stops it (`schemas.DecodeError`, `FoldRefused`, or a handler's error); on
    `FoldRefused` and decode errors the state is untouched.
    """
    envelope = REGISTRY.decode(raw, kind="event")
    evolve(state, seq, envelope)
    return envelope


def fold_raw(state: HiveState, seq: int, raw: bytes) -> HiveState:
    """Fold the bytes stored at `seq`, as every replica and the timeline's time travel do.

    Never raises: an entry that cannot be folded (a foreign writer's bytes, an event about
    something unknown, anything a handler trips over) is recorded as a `FoldFailure` and its
    sequence is consumed, so folding goes on and `applied_seq` still names a log position.
    """
    if seq <= state.applied_seq:
        return state
    try:
        fold_checked(state, seq, raw)
    except Exception as exc:  # nothing stored in the log may stop a replica
        record_failure(state, seq, raw, exc)
    return state


def record_failure(state: HiveState, seq: int, raw: bytes, exc: BaseException) -> None:
    """Note that the entry at `seq` changed nothing, with why, and move past it."""
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    failure = FoldFailure(seq, _type_of(raw), _printable(f"{type(exc).__name__}: {reason}", 300))
    state.fold_failure_count += 1
    state.fold_failures.append(failure)
    del state.fold_failures[:-RECENT_FOLD_FAILURES]
    state.applied_seq = max(state.applied_seq, seq)


def _type_of(raw: bytes) -> str:
    """The entry's CloudEvents type if it can be read at all, for the record."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return "(not JSON)"
    type_ = body.get("type") if isinstance(body, dict) else None
    return _printable(type_, 120) if isinstance(type_, str) else "(no type)"


def _printable(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with anything JSON cannot carry replaced."""
    clean = text.encode("utf-8", "replace").decode("utf-8")
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


# --- reputation and healing ----------------------------------------------------------------------
# Outcomes the log already records also move the agent's trust; the handlers above stay as they
# are and these run after them (`_also`). Time is the event's, so every replica folds the same.


def _also(event_type: type[Any]) -> Callable[[Handler], Handler]:
    """Run `extra` after the handler already registered for `event_type`."""

    def register(extra: Handler) -> Handler:
        base = _HANDLERS[event_type]

        def both(s: HiveState, e: Any, env: Envelope[Any], seq: int) -> None:
            base(s, e, env, seq)
            extra(s, e, env, seq)

        _HANDLERS[event_type] = both
        return extra

    return register


def _remember_snapshot(replica: Replica, ref: str | None, env: Envelope[Any]) -> None:
    replica.known_snapshots.append(KnownSnapshot(ref, env.time))
    del replica.known_snapshots[:-KNOWN_SNAPSHOTS]


def _record(
    agent: Agent,
    action: str,
    reason: str,
    anomaly_id: str | None,
    env: Envelope[Any],
    replica_id: str | None = None,
) -> None:
    agent.actions.append(HealingRecord(action, reason, anomaly_id, env.time, replica_id))
    del agent.actions[:-RECENT_ACTIONS]
    agent.healed_at = env.time if agent.healed_at is None else max(agent.healed_at, env.time)


@_also(events.AgentDeployed)
def _deployed_since(s: HiveState, e: events.AgentDeployed, env: Envelope[Any], seq: int) -> None:
    s.agents[e.agent_id].version_since = env.time


@_also(events.AgentRolloutStarted)
def _rollout_since(
    s: HiveState, e: events.AgentRolloutStarted, env: Envelope[Any], seq: int
) -> None:
    # Findings recorded before it are about the version being replaced (heal.py ignores them).
    s.agents[e.agent_id].version_since = env.time


@_also(events.ReplicaStarting)
def _starting_snapshot(
    s: HiveState, e: events.ReplicaStarting, env: Envelope[Any], seq: int
) -> None:
    _remember_snapshot(s.agents[e.agent_id].replicas[e.replica_id], e.snapshot, env)


@_also(events.ReplicaRunning)
def _running_trust(s: HiveState, e: events.ReplicaRunning, env: Envelope[Any], seq: int) -> None:
    agent = s.agents[e.agent_id]
    reputation.observe(
        agent.reputation, env.time, reputation.RUNNING, f"replica {e.replica_id} running"
    )


@_also(events.ReplicaCrashed)
def _crashed_trust(s: HiveState, e: events.ReplicaCrashed, env: Envelope[Any], seq: int) -> None:
    agent = s.agents[e.agent_id]
    reputation.observe(
        agent.reputation,
        env.time,
        -reputation.CRASHED,
        f"replica {e.replica_id} crashed: {e.reason}"[:300],
    )
    if e.snapshot is not None:
        _remember_snapshot(agent.replicas[e.replica_id], e.snapshot, env)


@_also(events.ReplicaFailed)
def _failed_trust(s: HiveState, e: events.ReplicaFailed, env: Envelope[Any], seq: int) -> None:
    agent = s.agents.get(e.agent_id)  # a deleted agent may be gone by now
    if agent is not None:
        reputation.observe(
            agent.reputation,
            env.time,
            -reputation.FAILED,
            f"replica {e.replica_id} failed: {e.reason}"[:300],
        )


@_also(events.ReplicaStopped)
def _stopped_snapshot(s: HiveState, e: events.ReplicaStopped, env: Envelope[Any], seq: int) -> None:
    agent = s.agents.get(e.agent_id)
    replica = agent.replicas.get(e.replica_id) if agent else None
    if replica is not None and e.snapshot is not None:
        _remember_snapshot(replica, e.snapshot, env)


@_also(observer.AnomalyDetected)
def _anomaly_trust(s: HiveState, e: observer.AnomalyDetected, env: Envelope[Any], seq: int) -> None:
    agent = s.agents[e.agent_id]
    recorded = agent.anomalies[-1]
    recorded.replica_id = e.replica_id
    recorded.window_start = e.window_start
    recorded.summary = e.summary[:300]
    recorded.event_id = env.id
    recorded.correlation = env.correlationid or env.causationid
    recorded.signals = tuple(
        sorted({s.signal for s in e.signals if s.signal != "combined" and s.score >= s.threshold})
    )
    reputation.observe(
        agent.reputation,
        env.time,
        reputation.anomaly_move(e.severity, e.score),
        f"{e.severity} {e.kind} anomaly ({e.detector}, score {e.score:.2f})",
    )


@_on(healing.AgentQuarantined)
def _quarantined(s: HiveState, e: healing.AgentQuarantined, env: Envelope[Any], seq: int) -> None:
    agent = _agent(s, e.agent_id, seq)
    agent.quarantine = Quarantine(e.reason, e.anomaly_id, env.time)
    _record(agent, "quarantine", e.reason, e.anomaly_id, env)


@_on(healing.AgentReleased)
def _released(s: HiveState, e: healing.AgentReleased, env: Envelope[Any], seq: int) -> None:
    agent = _agent(s, e.agent_id, seq)
    agent.quarantine = None
    _record(agent, "release", e.reason, None, env)


@_on(healing.ReplicaRewound)
def _rewound(s: HiveState, e: healing.ReplicaRewound, env: Envelope[Any], seq: int) -> None:
    agent = _agent(s, e.agent_id, seq)
    _record(agent, "restart", e.reason, e.anomaly_id, env, e.replica_id)


@_on(healing.AgentReverted)
def _reverted(s: HiveState, e: healing.AgentReverted, env: Envelope[Any], seq: int) -> None:
    agent = _agent(s, e.agent_id, seq)
    _record(agent, "rollback", e.reason, e.anomaly_id, env)


@_on(healing.AgentHealingSkipped)
def _healing_skipped(
    s: HiveState, e: healing.AgentHealingSkipped, env: Envelope[Any], seq: int
) -> None:
    agent = _agent(s, e.agent_id, seq)
    _record(agent, f"{e.action} skipped", e.reason, e.anomaly_id, env)


@_on(healing.ReputationChanged)
def _reputation(s: HiveState, e: healing.ReputationChanged, env: Envelope[Any], seq: int) -> None:
    agent = _agent(s, e.agent_id, seq)
    agent.reputation.published = e.trust


# --- machine-wide findings -----------------------------------------------------------------------


@_on(PodAnomalyDetected)
def _pod_anomaly(s: HiveState, e: PodAnomalyDetected, env: Envelope[Any], seq: int) -> None:
    """Keep the latest machine-wide findings on the pod they are about."""
    pod = s.pods.get(e.pod_id)
    if pod is None:
        raise FoldRefused(f"pod {e.pod_id} is not known")
    pod.anomalies.append(
        PodAnomaly(
            anomaly_id=e.anomaly_id,
            scope=e.scope,
            kind=e.kind,
            severity=e.severity,
            at=env.time,
            window_start=e.window_start,
            window_end=e.window_end,
            pods=list(e.pods),
            agents=max(d.deviating for d in e.deviations),
            withheld=e.withheld,
            summary=e.summary[:300],
        )
    )
    del pod.anomalies[:-RECENT_POD_ANOMALIES]
    pod.last_seq = seq
