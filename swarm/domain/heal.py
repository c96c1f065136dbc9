"""Self-healing policy: from the recorded findings, which commands should the Hive send now?

Pure, like `decide`: the reconcile loop (leader only) calls `plan(state, now)` and sends what it
returns. Each finding is acted upon once: an action moves the agent's `healed_at`, and only
findings recorded after it count towards the next one. Command ids are derived from the finding,
so sending one again before it is decided is deduplicated by JetStream, and they name the
recorded finding as their cause (`cause_of`), so `swarm trace <report id>` shows the whole chain.

Which action, per the agent's `spec.healing` (schemas/specs.py, `HealingPolicy`):

* a critical finding -> `on_critical` (default: quarantine);
* `repeat` findings of at least warning severity within `window_s` -> `on_repeated` (restart);
* trust below `min_trust` with a new finding -> `on_low_trust` (quarantine);
* the first of these (in this order) whose action is not `none` is taken;
* any of these becomes a rollback when the anomaly began within `regression_s` of the current
  version's rollout and an earlier version exists (`rollback_on_regression`).

Graded, so healing does no harm under legitimate load:

* only a *confirmed* critical finding fires `on_critical`: its evidence has two signals beyond
  their thresholds, or another finding of at least warning severity about the agent came within
  `confirm_s` of it (`HealingPolicy.confirm`); an unconfirmed one waits for its confirmation;
* warnings never stop an agent: a quarantine, whatever triggered it, needs a confirmed critical
  finding as its cause;
* a namespace's budget (`Quota.max_healing_stops` per `healing_window_s`, default 3 per 10 min)
  caps how many of its agents healing may stop (quarantine or roll back); beyond it `decide`
  records the action as skipped (`agent.healing_skipped`) instead of taking it;
* every action names its finding, and its reason says how to undo it with one command;
* a backlog (`LOAD_KINDS`) is the autoscaler's signal: it never triggers healing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from schemas import Payload
from schemas.healing import PublishReputation, QuarantineAgent, RevertAgent, RewindReplica
from schemas.specs import HealingPolicy, Quota
from swarm.domain import reputation
from swarm.domain.state import Agent, Anomaly, HiveState, KnownSnapshot, Replica

#: Findings of these severities count as "repeated".
_SERIOUS = frozenset({"warning", "critical"})
#: Replica phases a rewind applies to.
REWINDABLE = frozenset({"starting", "running"})
#: Healing actions that take an agent out of service, which a namespace's budget caps.
STOPS = frozenset({"quarantine", "rollback"})
#: Findings that say the agent is busy, not that it misbehaves: the autoscaler's signal, never a
#: reason to rewind, quarantine or roll it back (a rewind would even throw its state away).
LOAD_KINDS = frozenset({"backlog"})


def confirmed(anomaly: Anomaly, known: list[Anomaly], policy: HealingPolicy) -> bool:
    """Whether a critical finding is confirmed (see the module docstring): by a second signal
    in its own evidence, or by another serious finding within `confirm_s` of it."""
    if anomaly.severity != "critical":
        return False
    if not policy.confirm or len(anomaly.signals) >= 2:
        return True
    at = anomaly.at
    if at is None:
        return False
    return any(
        other is not anomaly
        and other.severity in _SERIOUS
        and other.at is not None
        and abs((at - other.at).total_seconds()) <= policy.confirm_s
        for other in known
    )


def stops_left(state: HiveState, namespace: str, now: datetime) -> int | None:
    """How many more of `namespace`'s agents self-healing may stop now; None: no cap."""
    ns = state.namespaces.get(namespace)
    quota = ns.quota if ns is not None else Quota()
    if quota.max_healing_stops is None:
        return None
    since = now - timedelta(seconds=quota.healing_window_s)
    used = sum(
        1
        for agent in state.agents.values()
        if agent.namespace == namespace
        for record in agent.actions
        if record.action in STOPS and record.anomaly_id is not None and record.at >= since
    )
    return max(0, quota.max_healing_stops - used)


def plan(state: HiveState, now: datetime) -> list[tuple[str, Payload]]:
    """(command id, payload) for every healing step and reputation update due at `now`."""
    out: list[tuple[str, Payload]] = []
    for agent in state.agents.values():
        if agent.deleted:
            continue
        if reputation.worth_publishing(agent.reputation, now):
            out.append(
                (
                    f"trust-{agent.agent_id}-{agent.last_seq}",
                    PublishReputation(agent_id=agent.agent_id),
                )
            )
        out += _heal(agent, now)
    return out


def cause_of(state: HiveState, payload: Payload) -> tuple[str, str | None] | None:
    """(causation id, correlation id) for a healing command: the recorded finding it acts on."""
    anomaly_id = getattr(payload, "anomaly_id", None)
    agent = state.agents.get(str(getattr(payload, "agent_id", "")))
    if anomaly_id is None or agent is None:
        return None
    for anomaly in reversed(agent.anomalies):
        if anomaly.anomaly_id == anomaly_id and anomaly.event_id is not None:
            return anomaly.event_id, anomaly.correlation
    return None


def good_snapshot(replica: Replica, before: datetime) -> KnownSnapshot | None:
    """The newest snapshot the replica had at or before `before`; else its oldest known one."""
    earlier = [k for k in replica.known_snapshots if k.at <= before]
    if earlier:
        return earlier[-1]
    return replica.known_snapshots[0] if replica.known_snapshots else None


def _heal(agent: Agent, now: datetime) -> list[tuple[str, Payload]]:
    last = agent.anomalies[-1].at if agent.anomalies else None
    if last is None or (agent.healed_at is not None and last <= agent.healed_at):
        return []  # the common case, checked first: the loop runs every 0.25 s on every agent
    policy = agent.spec.healing
    if agent.healed_at is not None and (now - agent.healed_at).total_seconds() < policy.cooldown_s:
        return []
    # Findings already acted upon, or about a version no longer current, do not count.
    fresh = [
        a
        for a in agent.anomalies
        if a.at is not None
        and a.kind not in LOAD_KINDS
        and (agent.healed_at is None or a.at > agent.healed_at)
        and (agent.version_since is None or a.at >= agent.version_since)
    ]
    if not fresh:
        return []
    trigger = _trigger(agent, fresh, policy, now)
    if trigger is None:
        return []
    action, cause, why = trigger
    regression = _regression(agent, cause, policy)
    if regression:
        action, why = "rollback", f"{why}; {regression}"
    reason = f"{why}: {cause.severity} {cause.kind} anomaly {cause.anomaly_id}"
    if cause.summary:
        reason += f" ({cause.summary[:600]})"
    where = f"{agent.name} --namespace {agent.namespace}"
    if action == "quarantine":
        if agent.quarantine is not None:
            return []
        reason = f"{reason[:880]}; undo: swarm agent release {where}"
        return [
            (
                f"quar-{cause.anomaly_id}",
                QuarantineAgent(
                    agent_id=agent.agent_id, reason=reason, anomaly_id=cause.anomaly_id
                ),
            )
        ]
    if action == "rollback":
        undo = f"swarm agent rollback {where} --to-version {agent.spec.version}"
        reason = f"{reason[: 1000 - len(undo) - 8]}; undo: {undo}"
        return [
            (
                f"revert-{cause.anomaly_id}",
                RevertAgent(agent_id=agent.agent_id, reason=reason, anomaly_id=cause.anomaly_id),
            )
        ]
    reason = reason[:1000]
    targets = [
        r
        for r in sorted(agent.replicas.values(), key=lambda r: r.replica_id)
        if r.phase in REWINDABLE and (cause.replica_id is None or r.replica_id == cause.replica_id)
    ]
    before = cause.window_start or cause.at or now
    return [
        (
            f"rw-{r.replica_id}-{cause.anomaly_id}",
            RewindReplica(
                agent_id=agent.agent_id,
                replica_id=r.replica_id,
                before=before,
                reason=reason,
                anomaly_id=cause.anomaly_id,
            ),
        )
        for r in targets
    ]


def _trigger(
    agent: Agent, fresh: list[Anomaly], policy: HealingPolicy, now: datetime
) -> tuple[str, Anomaly, str] | None:
    """The first trigger that fires with an action other than `none`, in order of severity."""
    fired: list[tuple[str, Anomaly, str]] = []
    critical = [a for a in fresh if confirmed(a, agent.anomalies, policy)]
    if critical:
        fired.append((policy.on_critical, critical[-1], "confirmed critical finding"))
    serious = [a for a in fresh if a.severity in _SERIOUS and a.at is not None]
    if serious:
        last_at = serious[-1].at
        assert last_at is not None
        recent = [
            a
            for a in serious
            if a.at is not None and (last_at - a.at).total_seconds() <= policy.window_s
        ]
        if len(recent) >= policy.repeat:
            fired.append(
                (
                    policy.on_repeated,
                    serious[-1],
                    f"{len(recent)} findings within {policy.window_s:g}s",
                )
            )
    trust = reputation.current(agent.reputation, now)
    if policy.min_trust > 0 and trust < policy.min_trust:
        fired.append(
            (policy.on_low_trust, fresh[-1], f"trust {trust:.2f} below {policy.min_trust:g}")
        )
    # Warnings never stop an agent: a quarantine needs a confirmed critical finding as its cause.
    return next(
        (
            f
            for f in fired
            if f[0] != "none" and (f[0] != "quarantine" or confirmed(f[1], agent.anomalies, policy))
        ),
        None,
    )


def _regression(agent: Agent, cause: Anomaly, policy: HealingPolicy) -> str | None:
    """Why the finding looks like the current version's fault, or None."""
    began = cause.window_start or cause.at
    if not policy.rollback_on_regression or began is None or agent.version_since is None:
        return None
    if not any(v != agent.spec.version for v in agent.history):
        return None
    after = (began - agent.version_since).total_seconds()
    if 0 <= after <= policy.regression_s:
        return f"began {after:.0f}s after version {agent.spec.version} was rolled out"
    return None
