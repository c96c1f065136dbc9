"""`decide(state, command, now) -> events | Rejection`: the Agent Orchestrator's rules.

Pure: no I/O, no clock, no randomness. Ids of new things are derived from the command id, so a
command decided twice on the same state yields the same events (and the same `Nats-Msg-Id`s).
Every event that moves an agent also re-derives the agent's overall status, so each status
change is on the log with its reason.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from schemas import Envelope, Payload, commands, events, healing, market, observer, webhooks
from schemas.machine import PodAnomalyDetected, ReportPodAnomaly
from schemas.specs import AgentSpec
from schemas.status import AgentStatus
from swarm.domain import placement, reputation
from swarm.domain.dispatch import HandlerTable
from swarm.domain.evolve import evolve
from swarm.domain.heal import REWINDABLE, good_snapshot, stops_left
from swarm.domain.outcome import Rejection, Rule
from swarm.domain.policy import check_identity, check_quota
from swarm.domain.state import (
    ACTIVE,
    DEFAULT_NAMESPACE,
    Agent,
    Grant,
    HiveState,
    Pod,
    Replica,
    Webhook,
)


@dataclass(slots=True)
class Decision:
    events: list[Payload] = field(default_factory=list)


Outcome = Decision | Rejection

#: Keeps every decision within one atomic append (nats-server allows 1000 messages per batch,
#: including the outcome and status events).
MAX_REPLICAS_PER_DECISION = 400
Handler = Callable[[HiveState, Any, Envelope[Any], datetime], Outcome]
_HANDLERS: HandlerTable[Handler] = HandlerTable()
_on = _HANDLERS.on


def decide(
    state: HiveState,
    command: Envelope[Any],
    now: datetime,
    *,
    missing_modules: frozenset[str] = frozenset(),
) -> Outcome:
    """Decide a decoded command against `state` (not modified) at time `now`.

    `missing_modules` are module sha256s the caller looked up and did not find in the object
    store (decide itself does no I/O); a deploy or rollout naming one is rejected (rule
    `module`) rather than left to crash-loop on every pod it is placed on.
    """
    handler = _HANDLERS.get(type(command.data))
    if handler is None:
        return Rejection(f"the Hive does not handle {command.type}", rule=Rule.TYPE)
    refusal = check_identity(state, command)
    if refusal is not None:
        return refusal
    spec = getattr(command.data, "spec", None)
    if isinstance(spec, AgentSpec) and spec.module.sha256 in missing_modules:
        return Rejection(
            f"module {spec.module.sha256} is not in the object store: push it with "
            "`swarm module push FILE` and use the sha256 it prints",
            rule=Rule.MODULE,
            errors=(
                {
                    "loc": "data.spec.module.sha256",
                    "msg": "no module with this sha256 was pushed",
                    "type": "module_missing",
                },
            ),
        )
    return handler(state, command.data, command, now)


# --- helpers -------------------------------------------------------------------------------------


def _live_agent(state: HiveState, agent_id: str) -> Agent | Rejection:
    """The agent with this id unless it does not exist or was deleted (then why not)."""
    agent = state.agents.get(agent_id)
    if agent is None or agent.deleted:
        return Rejection(f"agent {agent_id} not found", rule=Rule.NOT_FOUND)
    return agent


def _find(state: HiveState, namespace: str, name: str) -> Agent | Rejection:
    agent = state.agent_named(namespace, name)
    if agent is None:
        return Rejection(f"agent {namespace}/{name} not found", rule=Rule.NOT_FOUND)
    return agent


AgentHandler = Callable[[HiveState, Agent, Any, Envelope[Any], datetime], Outcome]


def _on_agent(command_type: type[Any]) -> Callable[[AgentHandler], AgentHandler]:
    """Register the handler of a command about one existing agent, and hand it that agent.

    Commands services send name the agent by id (they hold it); a user's by namespace and name,
    the way users think of it. Either way a missing or deleted agent is refused here, so every
    such command refuses it with the same rule and words. The handler itself is returned
    undecorated: a handler may call another with the agent it already holds."""

    def register(fn: AgentHandler) -> AgentHandler:
        def handle(state: HiveState, c: Any, env: Envelope[Any], now: datetime) -> Outcome:
            agent = (
                _live_agent(state, c.agent_id)
                if hasattr(c, "agent_id")
                else _find(state, c.namespace, c.name)
            )
            if isinstance(agent, Rejection):
                return agent
            return fn(state, agent, c, env, now)

        _on(command_type)(handle)
        return fn

    return register


def _with_status(state: HiveState, agent_id: str, out: list[Payload], now: datetime) -> Decision:
    """Append an AgentStatusChanged when `out` moves the agent's derived status."""
    agent = state.agents.get(agent_id)
    if agent is None:
        return Decision(out)
    before = agent.status
    trial = _preview(state, agent, out, now)
    if trial is None:
        return Decision(out)
    status, reason = derive_status(trial)
    if status != before:
        out.append(
            events.AgentStatusChanged(
                agent_id=agent_id, status=status, previous=before, reason=reason
            )
        )
    return Decision(out)


def _preview(state: HiveState, agent: Agent, out: list[Payload], now: datetime) -> Agent | None:
    """The agent as it will be after `out`, computed on a copy (decide never mutates state)."""
    from schemas.build import event

    trial_state = HiveState(
        applied_seq=0,
        namespaces={},
        agents={agent.agent_id: copy.deepcopy(agent)},
        by_name={},
        pods=copy.deepcopy(
            {
                r.pod_id: state.pods[r.pod_id]
                for r in agent.replicas.values()
                if r.pod_id in state.pods
            }
        ),
    )
    for p in out:
        if getattr(p, "agent_id", None) == agent.agent_id and p.TYPE.startswith("swarm.agent."):
            if isinstance(p, events.ReplicaScheduled) and p.pod_id not in trial_state.pods:
                trial_state.pods[p.pod_id] = copy.deepcopy(state.pods[p.pod_id])
            evolve(
                trial_state,
                trial_state.applied_seq + 1,
                event(p, aggregate_id=agent.agent_id, source="preview", time=now),
            )
    return trial_state.agents.get(agent.agent_id)


def derive_status(agent: Agent) -> tuple[AgentStatus, str]:
    """The agent's overall status and why, from its replicas."""
    replicas = list(agent.replicas.values())
    failed = [r for r in replicas if r.phase == "failed"]
    if failed:
        return "failed", f"replica {failed[0].replica_id} failed: {failed[0].reason}"
    active = [r for r in replicas if r.phase in ACTIVE]
    running = [r for r in active if r.phase == "running"]
    if agent.replicas_desired == 0:
        if not [r for r in replicas if r.phase not in ("stopped", "failed")]:
            return "stopped", "no replicas desired"
        return agent.status, agent.status_reason
    crashed = [r for r in active if r.phase == "crashed"]
    if len(running) >= agent.replicas_desired and agent.rollout is None:
        return "running", f"{len(running)}/{agent.replicas_desired} replicas running"
    if crashed:
        return "degraded", f"replica {crashed[0].replica_id} crashed: {crashed[0].reason}"
    if agent.ever_running and len(running) < agent.replicas_desired:
        return "degraded", f"{len(running)}/{agent.replicas_desired} replicas running"
    if running and agent.rollout is not None:
        return "running", f"rolling out {agent.rollout.version}: {len(running)} running"
    if any(r.phase in ("starting", "running") for r in active):
        return "starting", f"{len(running)}/{agent.replicas_desired} replicas running"
    if active and all(r.phase != "requested" for r in active):
        return "scheduled", f"{len(active)} replicas placed"
    return "requested", f"{len(active)} replicas waiting for placement"


def _new_replicas(
    agent_id: str, first_index: int, count: int, version: str, reason: str
) -> list[Payload]:
    return [
        events.ReplicaRequested(
            agent_id=agent_id,
            replica_id=f"{agent_id}-{first_index + i}",
            version=version,
            reason=reason,
        )
        for i in range(count)
    ]


def _requested_again(agent_id: str, replica: Replica, reason: str) -> events.ReplicaRequested:
    """The replica asked for again where it left off, after a crash, the loss of its pod or a
    preemption: its own version, resumed from its last snapshot (a new replica starts empty)."""
    return events.ReplicaRequested(
        agent_id=agent_id,
        replica_id=replica.replica_id,
        version=replica.version,
        snapshot=replica.snapshot,
        reason=reason,
    )


def _stop_order(replicas: list[Replica]) -> list[Replica]:
    """Which replicas to stop first: those doing the least useful work, newest first."""
    rank = {"requested": 0, "crashed": 1, "scheduled": 2, "starting": 3, "running": 4}
    return sorted(replicas, key=lambda r: (rank.get(r.phase, 5), -_index(r.replica_id)))


def _index(replica_id: str) -> int:
    tail = replica_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


# --- namespaces ----------------------------------------------------------------------------------


@_on(commands.CreateNamespace)
def _create_namespace(
    state: HiveState, c: commands.CreateNamespace, env: Envelope[Any], now: datetime
) -> Outcome:
    if c.name in state.namespaces:
        return Rejection(f"namespace {c.name} exists")
    return Decision([events.NamespaceCreated(name=c.name, quota=c.quota)])


@_on(commands.UpdateNamespace)
def _update_namespace(
    state: HiveState, c: commands.UpdateNamespace, env: Envelope[Any], now: datetime
) -> Outcome:
    if c.name not in state.namespaces:
        return Rejection(f"namespace {c.name} not found", rule=Rule.NOT_FOUND)
    return Decision([events.NamespaceUpdated(name=c.name, quota=c.quota)])


# --- access --------------------------------------------------------------------------------------


@_on(commands.GrantAccess)
def _grant(state: HiveState, c: commands.GrantAccess, env: Envelope[Any], now: datetime) -> Outcome:
    if c.namespace is not None and c.namespace not in state.namespaces:
        return Rejection(f"namespace {c.namespace} not found", rule=Rule.NOT_FOUND)
    where = f"namespace {c.namespace}" if c.namespace is not None else "every namespace"
    if Grant(c.user, c.namespace, c.role) in state.grants:
        return Rejection(f"user {c.user} holds role {c.role} in {where} already")
    return Decision([events.AccessGranted(user=c.user, role=c.role, namespace=c.namespace)])


@_on(commands.RevokeAccess)
def _revoke(
    state: HiveState, c: commands.RevokeAccess, env: Envelope[Any], now: datetime
) -> Outcome:
    if not any((g.user, g.namespace) == (c.user, c.namespace) for g in state.grants):
        where = f"namespace {c.namespace}" if c.namespace is not None else "every namespace"
        return Rejection(f"user {c.user} holds no role in {where}", rule=Rule.NOT_FOUND)
    return Decision([events.AccessRevoked(user=c.user, namespace=c.namespace)])


# --- agents --------------------------------------------------------------------------------------


@_on(commands.DeployAgent)
def _deploy(
    state: HiveState, c: commands.DeployAgent, env: Envelope[Any], now: datetime
) -> Outcome:
    if c.namespace not in state.namespaces:
        return Rejection(f"namespace {c.namespace} not found", rule=Rule.NOT_FOUND)
    if state.agent_named(c.namespace, c.name) is not None:
        return Rejection(
            f"agent {c.namespace}/{c.name} exists; use `swarm agent rollout` for a new version"
        )
    agent_id = env.id
    if agent_id in state.agents:
        return Rejection(f"agent id {agent_id} is taken; send the command with a new id")
    refusal = check_quota(state, c.namespace, new_agents=1, replicas=c.replicas, spec=c.spec)
    if refusal is not None:
        return refusal
    out: list[Payload] = [
        events.AgentDeployed(
            agent_id=agent_id,
            namespace=c.namespace,
            name=c.name,
            spec=c.spec,
            replicas=c.replicas,
            autoscale=c.autoscale,
        )
    ]
    out += _new_replicas(agent_id, 0, c.replicas, c.spec.version, "deployed")
    if c.replicas == 0:
        out.append(
            events.AgentStatusChanged(
                agent_id=agent_id,
                status="stopped",
                previous="requested",
                reason="deployed with 0 replicas",
            )
        )
    return Decision(out)


@_on_agent(commands.ScaleAgent)
def _scale(
    state: HiveState, agent: Agent, c: commands.ScaleAgent, env: Envelope[Any], now: datetime
) -> Outcome:
    if c.autoscale is None:
        return _scale_to(state, agent, c.replicas, f"scaled to {c.replicas}", now)
    return _autoscaled(state, agent, c, env, now)


def _scale_to(state: HiveState, agent: Agent, replicas: int, reason: str, now: datetime) -> Outcome:
    active = agent.active()
    current = [r for r in active if r.version == agent.spec.version]
    delta = replicas - agent.replicas_desired
    if delta > 0:
        refusal = check_quota(state, agent.namespace, replicas=delta, spec=agent.spec)
        if refusal is not None:
            return refusal
    out: list[Payload] = []
    if replicas != agent.replicas_desired:
        out.append(
            events.AgentScaled(
                agent_id=agent.agent_id, replicas=replicas, previous=agent.replicas_desired
            )
        )
    if agent.rollout is None:
        missing = replicas - len(active)
        if missing > 0:
            out += _new_replicas(
                agent.agent_id, agent.next_replica, missing, agent.spec.version, reason
            )
        for replica in _stop_order(active)[: max(0, -missing)]:
            out.append(
                events.ReplicaStopping(
                    agent_id=agent.agent_id, replica_id=replica.replica_id, reason=reason
                )
            )
    else:
        # During a rollout only the new version grows; old replicas are drained by the rollout.
        missing = replicas - len(current)
        if missing < 0:
            for replica in _stop_order(current)[:-missing]:
                out.append(
                    events.ReplicaStopping(
                        agent_id=agent.agent_id, replica_id=replica.replica_id, reason=reason
                    )
                )
    return _with_status(state, agent.agent_id, out, now)


@_on_agent(commands.StopAgent)
def _stop(
    state: HiveState, agent: Agent, c: commands.StopAgent, env: Envelope[Any], now: datetime
) -> Outcome:
    if agent.replicas_desired == 0 and not agent.active():
        return Decision([])
    out: list[Payload] = [
        events.AgentScaled(agent_id=agent.agent_id, replicas=0, previous=agent.replicas_desired)
    ]
    for replica in agent.active():
        out.append(
            events.ReplicaStopping(
                agent_id=agent.agent_id, replica_id=replica.replica_id, reason=c.reason
            )
        )
    if agent.rollout is not None:
        out.append(
            events.AgentRolloutCompleted(agent_id=agent.agent_id, version=agent.spec.version)
        )
    return _with_status(state, agent.agent_id, out, now)


@_on_agent(commands.DeleteAgent)
def _delete(
    state: HiveState, agent: Agent, c: commands.DeleteAgent, env: Envelope[Any], now: datetime
) -> Outcome:
    out: list[Payload] = [
        events.ReplicaStopping(
            agent_id=agent.agent_id, replica_id=r.replica_id, reason="agent deleted"
        )
        for r in agent.active()
    ]
    out.append(events.AgentDeleted(agent_id=agent.agent_id, reason="deleted by request"))
    return Decision(out)


def _start_rollout(
    state: HiveState, agent: Agent, spec: AgentSpec, max_surge: int, rollback: bool, now: datetime
) -> Outcome:
    if agent.rollout is not None:
        return Rejection(
            f"agent {agent.namespace}/{agent.name} is rolling out {agent.rollout.version}; "
            "wait for it to finish or roll back"
        )
    if spec.version == agent.spec.version:
        return Rejection(
            f"agent {agent.namespace}/{agent.name} already runs version {spec.version}"
        )
    out: list[Payload] = [
        events.AgentRolloutStarted(
            agent_id=agent.agent_id,
            spec=spec,
            from_version=agent.spec.version,
            max_surge=max_surge,
            rollback=rollback,
        )
    ]
    surge = min(max_surge, agent.replicas_desired)
    if surge == 0:
        out.append(events.AgentRolloutCompleted(agent_id=agent.agent_id, version=spec.version))
    out += _new_replicas(
        agent.agent_id, agent.next_replica, surge, spec.version, f"rollout to {spec.version}"
    )
    return _with_status(state, agent.agent_id, out, now)


@_on_agent(commands.RolloutAgent)
def _rollout(
    state: HiveState, agent: Agent, c: commands.RolloutAgent, env: Envelope[Any], now: datetime
) -> Outcome:
    refusal = check_quota(state, agent.namespace, replicas=0, spec=c.spec, agent=agent)
    if refusal is not None:
        return refusal
    return _start_rollout(state, agent, c.spec, c.max_surge, False, now)


@_on_agent(commands.RollbackAgent)
def _rollback(
    state: HiveState, agent: Agent, c: commands.RollbackAgent, env: Envelope[Any], now: datetime
) -> Outcome:
    if c.to_version is not None:
        target = c.to_version
        if target not in agent.versions:
            known = ", ".join(agent.history)
            return Rejection(
                f"agent {agent.namespace}/{agent.name} has no version {target} (has: {known})",
                rule=Rule.NOT_FOUND,
            )
    else:
        older = [v for v in agent.history if v != agent.spec.version]
        if not older:
            return Rejection(f"agent {agent.namespace}/{agent.name} has no earlier version")
        target = older[-1]
    if agent.rollout is not None and agent.rollout.version == agent.spec.version:
        # Abort the rollout in progress: old replicas still run, so go back to them directly.
        return _abort_rollout(state, agent, target, now)
    return _start_rollout(state, agent, agent.versions[target], 1, True, now)


def _abort_rollout(state: HiveState, agent: Agent, target: str, now: datetime) -> Outcome:
    spec = agent.versions[target]
    out: list[Payload] = [
        events.AgentRolloutStarted(
            agent_id=agent.agent_id,
            spec=spec,
            from_version=agent.spec.version,
            max_surge=1,
            rollback=True,
        )
    ]
    new = [r for r in agent.active() if r.version == agent.spec.version]
    for replica in new:
        out.append(
            events.ReplicaStopping(
                agent_id=agent.agent_id,
                replica_id=replica.replica_id,
                reason=f"rolled back to {target}",
            )
        )
    old = [r for r in agent.active() if r.version == target]
    missing = agent.replicas_desired - len(old)
    out += _new_replicas(
        agent.agent_id, agent.next_replica, max(0, missing), target, f"rolled back to {target}"
    )
    if missing <= 0 or all(r.phase == "running" for r in old):
        out.append(events.AgentRolloutCompleted(agent_id=agent.agent_id, version=target))
    return _with_status(state, agent.agent_id, out, now)


# --- placement -----------------------------------------------------------------------------------


def _waiting_placement(
    state: HiveState, agent_id: str, replica_id: str, pod_id: str
) -> tuple[Agent, Replica, Pod, AgentSpec] | Rejection:
    """The replica waiting for a placement, the ready pod proposed for it, and the spec of the
    replica's version; or why a placement there cannot be (placement.propose and .preempt)."""
    agent = _live_agent(state, agent_id)
    if isinstance(agent, Rejection):
        return agent
    replica = agent.replicas.get(replica_id)
    if replica is None:
        return Rejection(f"replica {replica_id} not found", rule=Rule.NOT_FOUND)
    if replica.phase != "requested":
        return Rejection(f"replica {replica_id} is {replica.phase}, not waiting for placement")
    pod = state.pods.get(pod_id)
    if pod is None or pod.status != "ready":
        return Rejection(f"pod {pod_id} is not ready", rule=Rule.POD_UNAVAILABLE)
    return agent, replica, pod, agent.versions.get(replica.version, agent.spec)


def _scheduled(
    agent: Agent, replica: Replica, pod: Pod, policy: str, reason: str
) -> events.ReplicaScheduled:
    """The placement a policy proposed (plainly, or after preempting), as it is written."""
    return events.ReplicaScheduled(
        agent_id=agent.agent_id,
        replica_id=replica.replica_id,
        pod_id=pod.pod_id,
        policy=policy,
        reason=reason,
    )


@_on(commands.ProposePlacement)
def _place(
    state: HiveState, c: commands.ProposePlacement, env: Envelope[Any], now: datetime
) -> Outcome:
    found = _waiting_placement(state, c.agent_id, c.replica_id, c.pod_id)
    if isinstance(found, Rejection):
        return found
    agent, replica, pod, spec = found
    memory, fuel, slots = pod.free()
    need = spec.resources
    if not placement.fits(need, (memory, fuel, slots)):
        return Rejection(
            f"placing {c.replica_id} would over-commit pod {c.pod_id}: needs {need.memory_mb} MB, "
            f"{need.fuel_per_s} fuel/s, 1 slot; free {memory} MB, {fuel} fuel/s, {slots} slots",
            rule=Rule.CAPACITY,
        )
    out: list[Payload] = [
        _scheduled(agent, replica, pod, c.policy, c.reason or f"placed by {c.policy}")
    ]
    return _with_status(state, agent.agent_id, out, now)


# --- pods ----------------------------------------------------------------------------------------


@_on(commands.RegisterPod)
def _register(
    state: HiveState, c: commands.RegisterPod, env: Envelope[Any], now: datetime
) -> Outcome:
    pod = state.pods.get(c.pod_id)
    if (
        pod is not None
        and pod.status == "ready"
        and (pod.capacity, pod.labels, pod.zone, pod.energy_cost, pod.lease_s)
        == (c.capacity, c.labels, c.zone, c.energy_cost, c.lease_s)
    ):
        return Decision([])  # re-registration after a pod restart with nothing new
    return Decision([events.PodRegistered(**c.model_dump())])


def _lose_pod(state: HiveState, pod_id: str, reason: str, now: datetime) -> Outcome:
    pod = state.pods.get(pod_id)
    if pod is None:
        return Rejection(f"pod {pod_id} not found", rule=Rule.NOT_FOUND)
    if pod.status == "lost" and not pod.replicas:
        return Decision([])
    # A pod losing more replicas than fit in one atomic write is handled in steps: the pod stays
    # lost while it still holds replicas, and the reconcile loop sends the command again.
    out: list[Payload] = (
        [] if pod.status == "lost" else [events.PodLost(pod_id=pod_id, reason=reason)]
    )
    touched: dict[str, list[Payload]] = {}
    for agent_id, replica_id in sorted(pod.replicas)[:MAX_REPLICAS_PER_DECISION]:
        agent = state.agents[agent_id]
        replica = agent.replicas[replica_id]
        moved: Payload
        if replica.phase == "stopping" or agent.deleted:
            moved = events.ReplicaStopped(
                agent_id=agent_id,
                replica_id=replica_id,
                reason=f"pod {pod_id} lost",
                snapshot=replica.snapshot,
            )
        else:
            moved = _requested_again(
                agent_id, replica, f"rescheduled: pod {pod_id} lost ({reason})"
            )
        touched.setdefault(agent_id, []).append(moved)
    for agent_id, changes in touched.items():
        out += _with_status(state, agent_id, changes, now).events
    return Decision(out)


@_on(commands.DeregisterPod)
def _deregister(
    state: HiveState, c: commands.DeregisterPod, env: Envelope[Any], now: datetime
) -> Outcome:
    return _lose_pod(state, c.pod_id, c.reason, now)


@_on(commands.ExpirePod)
def _expire(state: HiveState, c: commands.ExpirePod, env: Envelope[Any], now: datetime) -> Outcome:
    why = f"lease expired ({c.last_heartbeat_age_s:.1f}s without heartbeat"
    if c.lease_s is not None:
        why += f", lease {c.lease_s:.1f}s"
    if c.probed:
        why += "; no answer to a liveness probe"
    return _lose_pod(state, c.pod_id, why + ")", now)


# --- replica reports -----------------------------------------------------------------------------


@_on(commands.ReportReplica)
def _report(
    state: HiveState, c: commands.ReportReplica, env: Envelope[Any], now: datetime
) -> Outcome:
    agent = state.agents.get(c.agent_id)
    if agent is None:
        return Rejection(f"agent {c.agent_id} not found; stop the replica", rule=Rule.NOT_FOUND)
    replica = agent.replicas.get(c.replica_id)
    if replica is None:
        return Rejection(f"replica {c.replica_id} not found; stop it", rule=Rule.NOT_FOUND)
    if replica.pod_id != c.pod_id:
        return Rejection(
            f"replica {c.replica_id} is assigned to {replica.pod_id or 'no pod'}, "
            f"not {c.pod_id}; stop it",
            rule=Rule.NOT_ASSIGNED,
        )
    a, r = agent.agent_id, replica.replica_id
    out: list[Payload] = []
    if c.status == "starting":
        if replica.phase != "scheduled":
            return Decision([])
        out.append(
            events.ReplicaStarting(agent_id=a, replica_id=r, pod_id=c.pod_id, snapshot=c.snapshot)
        )
    elif c.status == "running":
        if replica.phase not in ("scheduled", "starting"):
            return Decision([])
        out.append(events.ReplicaRunning(agent_id=a, replica_id=r, pod_id=c.pod_id))
        out += _advance_rollout(agent, replica)
    elif c.status == "stopped" and replica.phase == "stopping":
        out.append(
            events.ReplicaStopped(
                agent_id=a, replica_id=r, reason=c.reason or "stopped", snapshot=c.snapshot
            )
        )
    elif c.status in ("crashed", "stopped"):
        if replica.phase not in ("scheduled", "starting", "running", "stopping"):
            return Decision([])
        out += _crash(agent, replica, c.reason or "exited unexpectedly", c.pod_id, c.snapshot, now)
    return _with_status(state, a, out, now)


def _crash(
    agent: Agent, replica: Replica, reason: str, pod_id: str, snapshot: str | None, now: datetime
) -> list[Payload]:
    policy = (agent.versions.get(replica.version) or agent.spec).restart
    window_start = now - timedelta(seconds=policy.window_s)
    crashes = [t for t in replica.crashes if t >= window_start] + [now]
    # Past `max_restarts` within the window the replica is not restarted: it fails instead.
    crash_loop = len(crashes) > policy.max_restarts
    restart_at: datetime | None = None
    if not crash_loop:
        delay = min(policy.backoff_s * 2 ** (len(crashes) - 1), policy.max_backoff_s)
        restart_at = now + timedelta(seconds=delay)
    out: list[Payload] = [
        events.ReplicaCrashed(
            agent_id=agent.agent_id,
            replica_id=replica.replica_id,
            pod_id=pod_id,
            reason=reason,
            crashes=len(crashes),
            restart_at=restart_at,
            snapshot=snapshot,
        )
    ]
    if crash_loop:
        out.append(
            events.ReplicaFailed(
                agent_id=agent.agent_id,
                replica_id=replica.replica_id,
                reason=(
                    f"crash loop: {len(crashes)} crashes in {policy.window_s:.0f}s (last: {reason})"
                ),
            )
        )
    return out


def _advance_rollout(agent: Agent, ready: Replica) -> list[Payload]:
    """A new-version replica is running: retire one old replica, start the next new one."""
    rollout = agent.rollout
    if rollout is None or ready.version != rollout.version:
        return []
    out: list[Payload] = []
    active = agent.active()
    old = [r for r in active if r.version != rollout.version]
    new = [r for r in active if r.version == rollout.version]
    new_running = sum(1 for r in new if r.phase == "running" or r.replica_id == ready.replica_id)
    if old:
        victim = _stop_order(old)[0]
        out.append(
            events.ReplicaStopping(
                agent_id=agent.agent_id,
                replica_id=victim.replica_id,
                reason=f"replaced by {ready.replica_id} ({rollout.version})",
            )
        )
    missing = agent.replicas_desired - len(new)
    if missing > 0:
        out += _new_replicas(
            agent.agent_id,
            agent.next_replica,
            min(missing, rollout.max_surge),
            rollout.version,
            f"rollout to {rollout.version}",
        )
    if len(old) <= 1 and new_running >= agent.replicas_desired:
        out.append(events.AgentRolloutCompleted(agent_id=agent.agent_id, version=rollout.version))
    return out


@_on(commands.RestartReplica)
def _restart(
    state: HiveState, c: commands.RestartReplica, env: Envelope[Any], now: datetime
) -> Outcome:
    agent = state.agents.get(c.agent_id)
    replica = agent.replicas.get(c.replica_id) if agent else None
    if agent is None or replica is None:
        return Rejection(f"replica {c.replica_id} not found", rule=Rule.NOT_FOUND)
    if replica.phase != "crashed":
        return Decision([])
    if replica.restart_at is not None and now < replica.restart_at:
        wait = (replica.restart_at - now).total_seconds()
        return Rejection(
            f"replica {c.replica_id} backs off for {wait:.1f}s more", rule=Rule.BACKOFF
        )
    out: list[Payload] = [
        _requested_again(agent.agent_id, replica, f"restart after crash {len(replica.crashes)}")
    ]
    return _with_status(state, agent.agent_id, out, now)


# --- observer findings ---------------------------------------------------------------------------


@_on_agent(observer.ReportAnomaly)
def _anomaly(
    state: HiveState, agent: Agent, c: observer.ReportAnomaly, env: Envelope[Any], now: datetime
) -> Outcome:
    """Record a finding on the agent it is about; policies react to the recorded event."""
    if c.replica_id is not None and c.replica_id not in agent.replicas:
        return Rejection(f"replica {c.replica_id} not found", rule=Rule.NOT_FOUND)
    if c.window_end < c.window_start:
        return Rejection("window_end is before window_start", rule=Rule.INVALID)
    finding = c.model_dump()
    return Decision([observer.AnomalyDetected(anomaly_id=env.id, **finding)])


# --- market: priority preemption -----------------------------------------------------------------


@_on(market.PreemptPlacement)
def _preempt(
    state: HiveState, c: market.PreemptPlacement, env: Envelope[Any], now: datetime
) -> Outcome:
    """Move lower-priority victims off a pod and place the waiting replica there, atomically.

    Nothing is preempted for an equal or lower priority, a victim must hold resources on that
    pod (scheduled, starting or running; a stopping one is leaving anyway), and the replica must
    fit once the victims are gone, by the same capacity rule as `placement.propose`. Each victim
    is requested again with its last snapshot, so it waits for a placement elsewhere.
    """
    found = _waiting_placement(state, c.agent_id, c.replica_id, c.pod_id)
    if isinstance(found, Rejection):
        return found
    agent, replica, pod, spec = found
    priority = spec.effective_priority
    keys = [(v.agent_id, v.replica_id) for v in c.victims]
    if len(set(keys)) != len(keys):
        return Rejection("victims repeat", rule=Rule.INVALID)
    memory, fuel, slots = pod.free()
    victims: list[tuple[Agent, Replica, int]] = []
    for agent_id, replica_id in keys:
        victim_agent = state.agents.get(agent_id)
        victim = victim_agent.replicas.get(replica_id) if victim_agent else None
        if victim_agent is None or victim is None:
            return Rejection(f"victim {replica_id} not found", rule=Rule.NOT_FOUND)
        if (agent_id, replica_id) not in pod.replicas or victim.phase not in (
            "scheduled",
            "starting",
            "running",
        ):
            return Rejection(
                f"victim {replica_id} is {victim.phase} on {victim.pod_id or 'no pod'}, "
                f"not placed on {c.pod_id}",
                rule=Rule.NOT_PLACED,
            )
        victim_spec = victim_agent.versions.get(victim.version, victim_agent.spec)
        victim_priority = victim_spec.effective_priority
        if victim_priority >= priority:
            return Rejection(
                f"victim {replica_id} has priority {victim_priority}, not lower than "
                f"{priority} of {c.replica_id}: nothing is preempted for an equal or lower "
                "priority",
                rule=Rule.PRIORITY,
            )
        memory += victim_spec.resources.memory_mb
        fuel += victim_spec.resources.fuel_per_s
        slots += 1
        victims.append((victim_agent, victim, victim_priority))
    need = spec.resources
    if not placement.fits(need, (memory, fuel, slots)):
        return Rejection(
            f"placing {c.replica_id} would over-commit pod {c.pod_id} even without the "
            f"{len(victims)} victims: needs {need.memory_mb} MB, {need.fuel_per_s} fuel/s, "
            f"1 slot; free then {memory} MB, {fuel} fuel/s, {slots} slots",
            rule=Rule.CAPACITY,
        )
    # Victims first: their reservations are released before the placement is folded.
    touched: dict[str, list[Payload]] = {}
    for victim_agent, victim, victim_priority in victims:
        why = f"preempted on {c.pod_id} by {c.replica_id} (priority {priority} > {victim_priority})"
        touched.setdefault(victim_agent.agent_id, []).extend(
            [
                market.ReplicaPreempted(
                    agent_id=victim_agent.agent_id,
                    replica_id=victim.replica_id,
                    pod_id=c.pod_id,
                    priority=victim_priority,
                    by_agent_id=agent.agent_id,
                    by_replica_id=replica.replica_id,
                    by_priority=priority,
                    reason=c.reason[:500],
                ),
                _requested_again(victim_agent.agent_id, victim, why),
            ]
        )
    out: list[Payload] = []
    for agent_id, changes in touched.items():
        if agent_id != agent.agent_id:
            out += _with_status(state, agent_id, changes, now).events
    placed: list[Payload] = [
        *touched.get(agent.agent_id, []),
        _scheduled(
            agent,
            replica,
            pod,
            c.policy,
            c.reason or f"placed by {c.policy} after preempting {len(victims)}",
        ),
    ]
    out += _with_status(state, agent.agent_id, placed, now).events
    return Decision(out)


# --- webhooks ------------------------------------------------------------------------------------
# Pure checks only: whether a URL's host resolves to a private address is decided when delivering
# (DNS answers change, and decide must not do I/O).


def _webhook_url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"url {url!r} is malformed: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"url {url!r} must use http or https, not {parts.scheme or 'no scheme'!r}"
    if not parts.hostname:
        return f"url {url!r} names no host"
    if parts.username is not None or parts.password is not None:
        return f"url {url!r} must not carry credentials; receivers check the signature instead"
    if port == 0:
        return f"url {url!r} names port 0"
    if any(c.isspace() for c in url):
        return f"url {url!r} contains white space"
    return None


def _invalid(field_name: str, reason: str) -> Rejection:
    return Rejection(
        reason,
        rule=Rule.INVALID,
        errors=({"loc": field_name, "msg": reason, "type": "value_error"},),
    )


@_on(webhooks.AddWebhook)
def _add_webhook(
    state: HiveState, c: webhooks.AddWebhook, env: Envelope[Any], now: datetime
) -> Outcome:
    problem = _webhook_url_problem(c.url)
    if problem is not None:
        return _invalid("url", problem)
    problem = webhooks.filter_problem(c.filter)
    if problem is not None:
        return _invalid("filter", problem)
    if env.id in state.webhooks:
        return Rejection(f"webhook id {env.id} is taken; send the command with a new id")
    for hook in state.webhooks.values():
        if not hook.removed and (hook.url, hook.filter) == (c.url, c.filter):
            return Rejection(
                f"webhook {hook.webhook_id} already sends {c.filter} to {c.url}",
                rule=Rule.DUPLICATE,
            )
    # The subscription is the command's, under the command's id (the event forbids fields it
    # does not have, so a field added to the command alone fails here rather than being dropped).
    return Decision([webhooks.WebhookAdded(webhook_id=env.id, **c.model_dump())])


def _live_webhook(state: HiveState, webhook_id: str) -> Webhook | Rejection:
    """The subscription with this id unless it does not exist or was removed (then why not)."""
    hook = state.webhooks.get(webhook_id)
    if hook is None or hook.removed:
        return Rejection(f"webhook {webhook_id} not found", rule=Rule.NOT_FOUND)
    return hook


@_on(webhooks.RemoveWebhook)
def _remove_webhook(
    state: HiveState, c: webhooks.RemoveWebhook, env: Envelope[Any], now: datetime
) -> Outcome:
    hook = _live_webhook(state, c.webhook_id)
    if isinstance(hook, Rejection):
        return hook
    return Decision([webhooks.WebhookRemoved(webhook_id=c.webhook_id, reason=c.reason)])


@_on(webhooks.RedeliverWebhook)
def _redeliver_webhook(
    state: HiveState, c: webhooks.RedeliverWebhook, env: Envelope[Any], now: datetime
) -> Outcome:
    hook = _live_webhook(state, c.webhook_id)
    if isinstance(hook, Rejection):
        return hook
    return Decision(
        [webhooks.WebhookRedeliveryRequested(webhook_id=c.webhook_id, event_ids=c.event_ids)]
    )


__all__ = [
    "DEFAULT_NAMESPACE",
    "Decision",
    "Outcome",
    "Rejection",
    "Rule",
    "decide",
    "derive_status",
]


# --- autoscaling ---------------------------------------------------------------------------------


def _autoscaled(
    state: HiveState, agent: Agent, c: commands.ScaleAgent, env: Envelope[Any], now: datetime
) -> Outcome:
    """A scale the autoscaler asked for: its forecast goes on the log with the `scaled` event."""
    decision = c.autoscale
    assert decision is not None
    if not (env.identity or "").startswith("service:"):
        return Rejection(
            "only a Swarm service may attach an autoscale decision to agent.scale",
            rule=Rule.IDENTITY,
        )
    if agent.autoscale is None or not agent.autoscale.enabled:
        # The policy was removed after the autoscaler read it: its decision no longer applies.
        return Rejection(
            f"agent {agent.namespace}/{agent.name} is not autoscaled", rule=Rule.AUTOSCALE
        )
    reason = f"autoscale {decision.direction}: {decision.reason}"[:500]
    outcome = _scale_to(state, agent, c.replicas, reason, now)
    if isinstance(outcome, Decision):
        outcome.events = [
            e.model_copy(update={"autoscale": decision}) if isinstance(e, events.AgentScaled) else e
            for e in outcome.events
        ]
    return outcome


@_on_agent(commands.AutoscaleAgent)
def _autoscale(
    state: HiveState, agent: Agent, c: commands.AutoscaleAgent, env: Envelope[Any], now: datetime
) -> Outcome:
    if c.autoscale == agent.autoscale:
        return Decision([])
    return Decision(
        [
            events.AgentAutoscaleChanged(
                agent_id=agent.agent_id, autoscale=c.autoscale, previous=agent.autoscale
            )
        ]
    )


# --- healing and reputation ----------------------------------------------------------------------
# Sent by the reconcile loop (swarm/domain/heal.py decides when) or by a user.


@_on_agent(healing.QuarantineAgent)
def _quarantine(
    state: HiveState, agent: Agent, c: healing.QuarantineAgent, env: Envelope[Any], now: datetime
) -> Outcome:
    if agent.quarantine is not None:
        return Decision([])  # already quarantined: the first reason stands
    skipped = _over_budget(state, agent, "quarantine", c.anomaly_id, env, now)
    if skipped is not None:
        return skipped
    return Decision(
        [
            healing.AgentQuarantined(
                agent_id=agent.agent_id, reason=c.reason, anomaly_id=c.anomaly_id
            )
        ]
    )


def _over_budget(
    state: HiveState,
    agent: Agent,
    action: Literal["quarantine", "rollback"],
    anomaly_id: str | None,
    env: Envelope[Any],
    now: datetime,
) -> Decision | None:
    """Self-healing's stop beyond the namespace's budget: recorded as skipped, not taken.

    Only the Hive's own healing is capped (it names the finding it acts on); a user's
    quarantine or rollback always goes through."""
    if env.identity != "service:hive" or anomaly_id is None:
        return None
    left = stops_left(state, agent.namespace, now)
    if left is None or left > 0:
        return None
    quota = state.namespaces[agent.namespace].quota
    return Decision(
        [
            healing.AgentHealingSkipped(
                agent_id=agent.agent_id,
                action=action,
                anomaly_id=anomaly_id,
                reason=(
                    f"namespace {agent.namespace} may have at most {quota.max_healing_stops} "
                    f"agents stopped by self-healing per {quota.healing_window_s:g}s, and that "
                    f"many were: {action} skipped for anomaly {anomaly_id} (act by hand, or "
                    "raise quota.max_healing_stops with `swarm namespace update`)"
                ),
            )
        ]
    )


@_on_agent(healing.ReleaseAgent)
def _release_agent(
    state: HiveState, agent: Agent, c: healing.ReleaseAgent, env: Envelope[Any], now: datetime
) -> Outcome:
    if agent.quarantine is None:
        return Rejection(f"agent {agent.namespace}/{agent.name} is not quarantined")
    return Decision([healing.AgentReleased(agent_id=agent.agent_id, reason=c.reason)])


@_on_agent(healing.RewindReplica)
def _rewind(
    state: HiveState, agent: Agent, c: healing.RewindReplica, env: Envelope[Any], now: datetime
) -> Outcome:
    replica = agent.replicas.get(c.replica_id)
    if replica is None:
        return Rejection(f"replica {c.replica_id} not found", rule=Rule.NOT_FOUND)
    if replica.phase not in REWINDABLE:
        return Rejection(f"replica {c.replica_id} is {replica.phase}; only a running one rewinds")
    known = good_snapshot(replica, c.before)
    ref = known.ref if known is not None else replica.snapshot
    where = f"snapshot {ref}" if ref else "an empty state"
    if known is not None and known.at > c.before:
        where += " (the oldest known: none predates the anomaly)"
    out: list[Payload] = [
        healing.ReplicaRewound(
            agent_id=agent.agent_id,
            replica_id=replica.replica_id,
            snapshot=ref,
            snapshot_at=known.at if known is not None else None,
            before=c.before,
            reason=c.reason,
            anomaly_id=c.anomaly_id,
        ),
        events.ReplicaRequested(
            agent_id=agent.agent_id,
            replica_id=replica.replica_id,
            version=replica.version,
            snapshot=ref,
            restore="exact",
            before=c.before,
            reason=f"rewound to its state before {c.before.isoformat()} or {where}: {c.reason}"[
                :1000
            ],
        ),
    ]
    return _with_status(state, agent.agent_id, out, now)


@_on_agent(healing.RevertAgent)
def _revert(
    state: HiveState, agent: Agent, c: healing.RevertAgent, env: Envelope[Any], now: datetime
) -> Outcome:
    skipped = _over_budget(state, agent, "rollback", c.anomaly_id, env, now)
    if skipped is not None:
        return skipped
    rollback = commands.RollbackAgent(namespace=agent.namespace, name=agent.name)
    outcome = _rollback(state, agent, rollback, env, now)
    if isinstance(outcome, Rejection):
        return outcome
    started = [e for e in outcome.events if isinstance(e, events.AgentRolloutStarted)]
    target = started[0].spec.version if started else agent.spec.version
    reverted = healing.AgentReverted(
        agent_id=agent.agent_id,
        from_version=agent.spec.version,
        to_version=target,
        reason=c.reason,
        anomaly_id=c.anomaly_id,
    )
    return Decision([reverted, *outcome.events])


@_on_agent(healing.PublishReputation)
def _publish_reputation(
    state: HiveState, agent: Agent, c: healing.PublishReputation, env: Envelope[Any], now: datetime
) -> Outcome:
    if not reputation.worth_publishing(agent.reputation, now):
        return Decision([])
    trust = round(reputation.current(agent.reputation, now), 4)
    return Decision(
        [
            healing.ReputationChanged(
                agent_id=agent.agent_id,
                trust=trust,
                previous=agent.reputation.published,
                reason=agent.reputation.reason,
            )
        ]
    )


# --- machine-wide findings -----------------------------------------------------------------------


@_on(ReportPodAnomaly)
def _pod_anomaly(
    state: HiveState, c: ReportPodAnomaly, env: Envelope[Any], now: datetime
) -> Outcome:
    """Record a machine-wide finding on its pod. No healing follows: it is about the machine,
    not about any agent on it."""
    if c.pod_id not in state.pods:
        return Rejection(f"pod {c.pod_id} not found", rule=Rule.NOT_FOUND)
    if c.window_end < c.window_start:
        return Rejection("window_end is before window_start", rule=Rule.INVALID)
    return Decision([PodAnomalyDetected(anomaly_id=env.id, **c.model_dump())])
