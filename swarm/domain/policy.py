"""Who may issue what, read what, and how much a namespace may hold. Each refusal names its
rule.

Identities are `kind:name` strings carried in the CloudEvents `identity` extension:
`user:<name>`, `service:<hive|scheduler|observer|gateway>`, `pod:<pod id>`, `agent:<agent id>`.
An agent acting on its own may only issue the command types its spec lists in `autonomy`, and
only about its own namespace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas import Envelope, commands, events, healing, market
from schemas.machine import ReportPodAnomaly
from schemas.specs import ACCESS_ROLES, AccessRole, AgentSpec, Quota
from swarm.domain.outcome import Rejection, Rule
from swarm.domain.state import ACTIVE, Agent, Grant, HiveState

_UNLIMITED = Quota()


_KINDS = ("user", "service", "pod", "agent")
#: Commands only Swarm's own services may send (the scheduler's proposals, the reconcile loop's,
#: the Observer's machine-wide findings).
_SERVICE_ONLY = (
    commands.ProposePlacement,
    commands.ExpirePod,
    commands.RestartReplica,
    market.PreemptPlacement,
    healing.PublishReputation,
    ReportPodAnomaly,
)
#: Commands about one pod, which only that pod (or a service) may send.
_POD_SCOPED = (commands.RegisterPod, commands.DeregisterPod, commands.ReportReplica)


#: The identities each role of a stack's principals may act under (`swarm.devstack.principals`
#: issues the keys; `swarm.kernel.signing` signs with them): a command's `identity` is a claim,
#: which the Hive checks against who signed it. The stack's owner may act as anyone.
ROLE_CLAIMS: dict[str, tuple[str, ...]] = {
    "admin": _KINDS,
    "hive": ("service",),
    "gateway": ("user",),
    "webhooks": ("service",),
    "service": ("service",),
    "pod": ("pod", "agent"),
    "user": ("user",),
}


def may_claim(role: str, name: str, identity: str) -> str | None:
    """None when the principal `name` (of `role`) may act as `identity`; else what it may act
    as. A pod acts as itself (`pod:<its name>`) or for its agents, never as another pod; a user
    as itself. The one statement of the rule: the Hive applies it to commands
    (`check_principal`), pods to mesh messages (runtime/meshguard.py)."""
    kind, _, claimed = identity.partition(":")
    allowed = ROLE_CLAIMS.get(role, ())
    itself = {"pod": "pod", "user": "user"}.get(role)
    if kind in allowed and claimed and not (kind == itself and claimed != name):
        return None
    return ", ".join(f"{k}:{name}" if k == itself else f"{k}:<name>" for k in allowed) or "nothing"


def answer_refusal(
    signer: tuple[str, str] | None,
    identity: str,
    replica: str,
    agent: tuple[str, str],
    placed: Mapping[str, str | None] | None,
) -> str | None:
    """Why a signed answer from an agent's mesh subject is not that agent's, or None.

    `signer` is the signing principal (name, role), None for a key the stack did not issue;
    `identity` and `replica` are what the answer claims; `agent` is the agent asked (id, and
    `namespace/name` to say so); `placed` maps each of its replicas to the pod the log places
    it on, as the reader's view of the log knows it (at least as far as the answer's placement).
    Any pod may listen on any agent's subject (NATS does not tell pods apart), so an answer
    counts only from the pod that runs the replica it names, speaking as that agent. With
    `placed` None (a pod's refusal: it carries nothing of the agent's, and its asker may not be
    allowed to read where the agent runs), a pod of the stack speaking for an agent is enough."""
    agent_id, shown = agent
    if signer is None or signer[1] != "pod" or not identity.startswith("agent:"):
        who = f"{signer[0]} (role {signer[1]})" if signer else "a key the stack did not issue"
        return f"the answer is signed by {who} as {identity!r}, not by a pod for the agent"
    if placed is None:
        return None
    if identity.removeprefix("agent:") != agent_id:
        return f"the answer speaks as {identity!r}, not as {shown} (agent:{agent_id})"
    if replica not in placed:
        return f"the answer names replica {replica!r}, which is no replica of {shown}"
    if placed[replica] != signer[0]:
        where = f"on {placed[replica]}" if placed[replica] else "on no pod"
        return (
            f"the answer is signed by {signer[0]} for replica {replica}, which the log places "
            f"{where}: another pod answered in the agent's stead"
        )
    return None


def check_principal(role: str, name: str, command: Envelope[Any]) -> Rejection | None:
    """Whether the principal `name` (of `role`) that signed `command` may claim its identity
    (`may_claim`), and send it: a command about one pod (its registration, its reports) counts
    only signed by that pod's own key, so the Hive places replicas only on pods whose key the
    stack issued, whatever identity a user or service would claim for it."""
    identity = command.identity or ""
    may = may_claim(role, name, identity)
    if may is not None:
        return Rejection(
            f"{command.type} claims identity {identity or '(none)'!r} but is signed by {name} "
            f"(role {role}), who may act only as {may}",
            Rule.IDENTITY,
        )
    payload = command.data
    if isinstance(payload, _POD_SCOPED) and not (role == "pod" and name == payload.pod_id):
        return Rejection(
            f"{command.type} about pod {payload.pod_id} must be signed by that pod's own key, "
            f"not by {name} (role {role}): a pod registers and reports with the key the stack "
            "issued to it",
            Rule.IDENTITY,
        )
    return None


#: How far each role reaches: a role allows what every role before it allows.
_RANK: dict[str, int] = {role: n for n, role in enumerate(ACCESS_ROLES)}


def check_access(state: HiveState, role: str, command: Envelope[Any]) -> Rejection | None:
    """Whether a user may send `command`: the role it holds where the command acts
    (`HiveState.grants`, given by `swarm.cmd.access.grant`) must reach the role it needs there.

    Only `user` principals are held to grants: the stack's owner, its services, pods and agents
    are bound by `check_principal`, `check_identity` and the agents' autonomy instead. A user
    acts as itself alone (`check_principal` runs first), so its name is its identity's."""
    if not held_to_grants(role):
        return None
    user = (command.identity or "").partition(":")[2]
    needed, namespace = _needs(state, command.data)
    refused = role_refusal(state.grants, user, namespace, needed, f"send {command.type}")
    return None if refused is None else Rejection(refused, Rule.ACCESS)


def held_to_grants(role: str) -> bool:
    """Whether a principal of `role` is held to the grants (a user), or reaches everything its
    role lets it (the stack's owner, its services and pods)."""
    return role == "user"


def role_refusal(
    grants: Iterable[Grant], user: str, namespace: str | None, needed: AccessRole, what: str
) -> str | None:
    """Why `user` may not do `what` ("send swarm.cmd.agent.deploy", "read namespace team"),
    which takes role `needed` in `namespace` (None: in every namespace); None when the role it
    holds there reaches it. The one wording of a refusal by role, with the command that would
    grant it: the Hive's for commands and queries, the HTTP API's for its reads."""
    held = held_role(grants, user, namespace)
    if reaches(held, needed):
        return None
    where = f"namespace {namespace}" if namespace is not None else "every namespace"
    return (
        f"user {user} may not {what}: it needs role {needed} in {where} and holds "
        f"{held or 'no role'} there (the stack's owner grants it with "
        f"`{_grant_command(user, needed, namespace)}`)"
    )


def _grant_command(user: str, role: AccessRole, namespace: str | None) -> str:
    """The command by which the stack's owner grants `user` `role` in `namespace` (None: in
    every namespace), named by every refusal."""
    scope = f"--namespace {namespace}" if namespace is not None else "--all-namespaces"
    return f"swarm user grant {user} {role} {scope}"


#: The least role, which reading a namespace takes (a viewer reads).
READ_ROLE: AccessRole = ACCESS_ROLES[0]


@dataclass(frozen=True, slots=True)
class Reader:
    """Whom a read of the Hive's state is for, and so how much of it it shows: a user
    (`user`) reads the namespaces where it holds a role, any role, and what spans every
    namespace (pods, webhooks, the whole state) only with a role in every namespace; anyone
    else (`user` None: the stack's owner, its services, pods) reads everything. The Hive
    answers queries by it (services/hive/queries.py); the HTTP API limits a user's token's
    reads by the same rule (`swarm.gateway.access`)."""

    user: str | None = None

    @classmethod
    def of(cls, role: str, name: str) -> Reader:
        """The reader a principal `name` of `role` is."""
        return cls(name if held_to_grants(role) else None)

    def reads(self, grants: Iterable[Grant], namespace: str | None) -> bool:
        """Whether it may read `namespace` (None: what spans every namespace)."""
        return self.user is None or reaches(held_role(grants, self.user, namespace), READ_ROLE)

    def refusal(self, grants: Iterable[Grant], namespace: str | None, what: str) -> str | None:
        """Why it may not `what` ("read namespace team"), which reads `namespace` (None: every
        namespace); None when it may."""
        if self.user is None:
            return None
        return role_refusal(grants, self.user, namespace, READ_ROLE, what)


def held_role(grants: Iterable[Grant], user: str, namespace: str | None) -> AccessRole | None:
    """The highest role `user` holds in `namespace` (None: the role it holds in every one)."""
    held = [
        g.role
        for g in grants
        if g.user == user and (g.namespace is None or g.namespace == namespace)
    ]
    return max(held, key=_RANK.__getitem__, default=None)


def reaches(held: AccessRole | None, needed: AccessRole) -> bool:
    """Whether holding `held` (None: no role) allows what `needed` allows."""
    return held is not None and _RANK[held] >= _RANK[needed]


#: The role a user needs in a namespace to message its agents on the mesh (for a topic, which
#: is global, in every namespace): a message makes an agent act, as running it does.
MESSAGE_ROLE: AccessRole = "operator"


def check_message(grants: Iterable[Grant], user: str, namespace: str | None) -> str | None:
    """Why user `user` may not message an agent of `namespace` (None: on a topic); None when it
    may. The pods apply it (runtime/meshguard.py) with the grants of their view of the log."""
    held = held_role(grants, user, namespace)
    if reaches(held, MESSAGE_ROLE):
        return None
    where = f"agents of namespace {namespace}" if namespace is not None else "on a topic"
    return (
        f"user {user} may not message {where}: it needs role {MESSAGE_ROLE} "
        f"{'there' if namespace is not None else 'in every namespace'} and holds "
        f"{held or 'no role'} (the stack's owner grants it with "
        f"`{_grant_command(user, MESSAGE_ROLE, namespace)}`)"
    )


def granted(grants: tuple[Grant, ...], e: events.AccessGranted) -> tuple[Grant, ...]:
    """`grants` after `e`: the role replaces the one the user held there."""
    return (*revoked(grants, e.user, e.namespace), Grant(e.user, e.namespace, e.role))


def revoked(grants: tuple[Grant, ...], user: str, namespace: str | None) -> tuple[Grant, ...]:
    """`grants` without the one `user` held in `namespace`."""
    return tuple(g for g in grants if (g.user, g.namespace) != (user, namespace))


def _needs(state: HiveState, payload: Any) -> tuple[AccessRole, str | None]:
    """The role a command needs, and the namespace it needs it in (None: every namespace)."""
    if isinstance(payload, commands.GrantAccess | commands.RevokeAccess):
        return "admin", payload.namespace
    if isinstance(payload, commands.UpdateNamespace):
        return "admin", payload.name
    if isinstance(payload, commands.AgentCommand):
        return "operator", payload.namespace
    agent_id = getattr(payload, "agent_id", None)
    if isinstance(agent_id, str) and agent_id in state.agents:
        return "operator", state.agents[agent_id].namespace
    # Creating namespaces, webhooks (which see every event), pods, and what names an agent
    # that does not exist: the whole stack's business.
    return "admin", None


def check_identity(state: HiveState, command: Envelope[Any]) -> Rejection | None:
    identity = command.identity
    if not identity or ":" not in identity:
        return Rejection(
            "command carries no identity (CloudEvents extension `identity`, kind:name)",
            Rule.IDENTITY,
        )
    kind, _, name = identity.partition(":")
    if kind not in _KINDS or not name:
        return Rejection(
            f"identity {identity!r} must be one of {', '.join(k + ':<name>' for k in _KINDS)}",
            Rule.IDENTITY,
        )
    payload = command.data
    if isinstance(payload, _SERVICE_ONLY) and kind != "service":
        return Rejection(
            f"{command.type} may only be sent by a Swarm service, not {identity}", Rule.IDENTITY
        )
    if (
        isinstance(payload, _POD_SCOPED)
        and kind not in ("service", "user")
        and identity != f"pod:{payload.pod_id}"
    ):
        return Rejection(
            f"{command.type} about pod {payload.pod_id} may not be sent by {identity}",
            Rule.IDENTITY,
        )
    if kind == "agent":
        return _check_autonomy(state, name, command)
    return None


def _check_autonomy(state: HiveState, agent_id: str, command: Envelope[Any]) -> Rejection | None:
    agent = state.agents.get(agent_id)
    if agent is None or agent.deleted:
        return Rejection(f"agent {agent_id} is not known; it may not issue commands", Rule.AUTONOMY)
    if command.type not in agent.spec.autonomy:
        allowed = ", ".join(agent.spec.autonomy) or "nothing"
        return Rejection(
            f"agent {agent.namespace}/{agent.name} may not issue {command.type} on its own "
            f"(its autonomy allows: {allowed})",
            Rule.AUTONOMY,
        )
    namespace = getattr(command.data, "namespace", agent.namespace)
    if namespace != agent.namespace:
        return Rejection(
            f"agent {agent.namespace}/{agent.name} may only act in namespace {agent.namespace}",
            Rule.AUTONOMY,
        )
    return None


def check_quota(
    state: HiveState,
    namespace: str,
    *,
    new_agents: int = 0,
    replicas: int = 0,
    spec: AgentSpec,
    agent: Agent | None = None,
) -> Rejection | None:
    """Would adding `new_agents` agents and `replicas` replicas of `spec` break the quota?

    With `agent` (a rollout), the agent's desired replicas are re-priced at the new spec.
    """
    ns = state.namespaces[namespace]
    quota, usage = ns.quota, ns.usage
    if quota == _UNLIMITED:
        return None
    used_memory, used_fuel = usage.memory_mb, usage.fuel_per_s
    if agent is not None:
        used_memory += agent.replicas_desired * (
            spec.resources.memory_mb - agent.spec.resources.memory_mb
        )
        used_fuel += agent.replicas_desired * (
            spec.resources.fuel_per_s - agent.spec.resources.fuel_per_s
        )
    checks = (
        (Rule.QUOTA_MAX_AGENTS, quota.max_agents, usage.agents + new_agents, "agents"),
        (Rule.QUOTA_MAX_REPLICAS, quota.max_replicas, usage.replicas + replicas, "replicas"),
        (
            Rule.QUOTA_MAX_MEMORY_MB,
            quota.max_memory_mb,
            used_memory + replicas * spec.resources.memory_mb,
            "MB of memory",
        ),
        (
            Rule.QUOTA_MAX_FUEL_PER_S,
            quota.max_fuel_per_s,
            used_fuel + replicas * spec.resources.fuel_per_s,
            "fuel/s",
        ),
    )
    for rule, limit, wanted, unit in checks:
        if limit is not None and wanted > limit:
            limit_name = rule.removeprefix("quota.")
            return Rejection(
                f"namespace {namespace} quota {limit_name} is {limit}; "
                f"this would use {wanted} {unit}",
                rule,
            )
    return None


__all__ = [
    "ACTIVE",
    "MESSAGE_ROLE",
    "READ_ROLE",
    "ROLE_CLAIMS",
    "Reader",
    "answer_refusal",
    "check_access",
    "check_identity",
    "check_message",
    "check_principal",
    "check_quota",
    "granted",
    "held_role",
    "held_to_grants",
    "may_claim",
    "reaches",
    "revoked",
    "role_refusal",
]
