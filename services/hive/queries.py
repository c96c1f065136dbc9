"""Read-only queries over `swarm.query.…`, answered by any replica from the agreed state.

Every answer carries `applied_seq`, the last log sequence the answering replica has folded, so a
client that just got an outcome at sequence N can tell whether the answer reflects it.

A Hive given the stack's principals answers a query only as its signer's
(`swarm.kernel.queryguard`: a signature that holds, by a principal, recent, answered under the
signer's own inbox), else `{"error": "unauthenticated: …", "code": "unauthenticated"}`, and
shows the signer what its role lets it read (`swarm.domain.policy.Reader`):

* the stack's owner, its services and pods read everything;
* a user reads the namespaces where it holds a role: the agents and namespaces listed are of
  those alone, and an agent or the agents of a namespace elsewhere are answered
  `{"error": "forbidden: …", "code": "forbidden"}` with the role it needs and the command that
  grants it (whether or not the agent exists); pods, webhooks and the whole state span every
  namespace, and take a role in every one; its grants are its own alone;
* the replica's status (`hive.status`) and the state's digest are every principal's.

A Hive without principals answers every query in full, as it takes unsigned commands.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from pydantic import BaseModel

from schemas import names, utcnow
from schemas.views import (
    AccessAnswer,
    AgentAnomalyView,
    AgentAnswer,
    AgentDetailView,
    AgentsAnswer,
    AgentView,
    Answer,
    FreeCapacity,
    GrantView,
    HealingView,
    InstanceView,
    NamespacesAnswer,
    NamespaceView,
    PodAnomalyView,
    PodsAnswer,
    PodView,
    QuarantineView,
    ReplicaCounts,
    ReputationView,
    RolloutView,
    WebhooksAnswer,
    WebhookView,
)
from services.hive.raft import ReplicatedState
from swarm.domain import reputation
from swarm.domain.decide import derive_status
from swarm.domain.policy import Reader
from swarm.domain.state import Agent, HiveState, Pod
from swarm.kernel.eventlog import EventLog, Message, Subscription
from swarm.kernel.queryguard import Principals, QueryGuard, forbidden, unauthenticated

log = structlog.get_logger(__name__)

_View = TypeVar("_View", bound=BaseModel)


def _shown(view: type[_View], record: object) -> _View:
    """`record` (a dataclass of the state) as `view`, which shows some of its fields as they are,
    under the same names; the fields it leaves out stay in the state."""
    return view.model_validate(record, from_attributes=True)


def agent_view(agent: Agent) -> AgentView:
    """The agent as listed: status, replica counts, rollout, trust and quarantine."""
    replicas = agent.replicas.values()
    q = agent.quarantine
    return AgentView(
        agent_id=agent.agent_id,
        namespace=agent.namespace,
        name=agent.name,
        version=agent.spec.version,
        status=agent.status,
        reason=agent.status_reason,
        replicas=ReplicaCounts(
            desired=agent.replicas_desired,
            running=sum(r.phase == "running" for r in replicas),
            active=len(agent.active()),
        ),
        rollout=(
            RolloutView(
                version=agent.rollout.version,
                from_version=agent.rollout.from_version,
                rollback=agent.rollout.rollback,
            )
            if agent.rollout
            else None
        ),
        deleted=agent.deleted,
        created_at=agent.created_at,
        last_seq=agent.last_seq,
        autoscale=agent.autoscale,
        trust=round(reputation.current(agent.reputation, utcnow()), 3),
        quarantined=_shown(QuarantineView, q) if q else None,
    )


def agent_detail(agent: Agent) -> AgentDetailView:
    """The agent as shown alone: the listed view, its spec, history, replicas and health."""
    summary = agent_view(agent)
    rep = agent.reputation
    replicas = sorted(agent.replicas.values(), key=lambda r: r.replica_id)
    return AgentDetailView(
        **dict(summary),
        reputation=ReputationView(
            trust=summary.trust,
            recorded=round(rep.trust, 4),
            at=rep.at,
            published=rep.published,
            reason=rep.reason,
        ),
        anomalies=[_shown(AgentAnomalyView, a) for a in agent.anomalies],
        healing=[_shown(HealingView, h) for h in agent.actions],
        spec=agent.spec.model_dump(mode="json", exclude={"module": {"inline"}}),
        history=list(agent.history),
        instances=[
            InstanceView(
                replica_id=r.replica_id,
                version=r.version,
                phase=r.phase,
                pod_id=r.pod_id,
                reason=r.reason,
                snapshot=r.snapshot,
                crashes=len(r.crashes),
                restart_at=r.restart_at,
            )
            for r in replicas
        ],
        derived_status=list(derive_status(agent)),
    )


def pod_view(pod: Pod) -> PodView:
    memory, fuel, slots = pod.free()
    return PodView(
        pod_id=pod.pod_id,
        status=pod.status,
        zone=pod.zone,
        labels=dict(pod.labels),
        energy_cost=pod.energy_cost,
        lease_s=pod.lease_s,
        capacity=pod.capacity,
        free=FreeCapacity(memory_mb=memory, fuel_per_s=fuel, slots=slots),
        replicas=len(pod.replicas),
        anomalies=[_shown(PodAnomalyView, a) for a in pod.anomalies],
    )


#: A query's answer from the state, the request's body, and whom it is for.
Query = Callable[[HiveState, dict[str, Any], Reader], Answer | dict[str, Any]]


def _refused(state: HiveState, reader: Reader, namespace: str) -> dict[str, str] | None:
    """The `forbidden` answer when `reader` may not read `namespace`, else None."""
    refused = reader.refusal(state.grants, namespace, f"read namespace {namespace}")
    return None if refused is None else forbidden(refused)


def _spanning(what: str) -> Callable[[Query], Query]:
    """A query over what spans every namespace (`what`: "list the pods"), answered `forbidden`
    to a reader without a role in every namespace (`Reader.refusal`)."""

    def guarded(query: Query) -> Query:
        def answer(
            state: HiveState, req: dict[str, Any], reader: Reader
        ) -> Answer | dict[str, Any]:
            refused = reader.refusal(state.grants, None, what)
            return forbidden(refused) if refused is not None else query(state, req, reader)

        return answer

    return guarded


def _agents_list(
    state: HiveState, req: dict[str, Any], reader: Reader
) -> AgentsAnswer | dict[str, Any]:
    namespace = req.get("namespace")
    if namespace is not None and (refused := _refused(state, reader, str(namespace))):
        return refused
    agents = [
        agent_view(a)
        for a in sorted(state.agents.values(), key=lambda a: (a.namespace, a.name, a.agent_id))
        if not a.deleted
        and (namespace is None or a.namespace == namespace)
        and reader.reads(state.grants, a.namespace)
    ]
    return AgentsAnswer(agents=agents)


def _agents_get(
    state: HiveState, req: dict[str, Any], reader: Reader
) -> AgentAnswer | dict[str, Any]:
    agent = None
    if "agent_id" in req:
        agent = state.agents.get(str(req["agent_id"]))
    elif "name" in req:
        namespace = str(req.get("namespace", "default"))
        # Refused whether or not the agent exists: a user learns nothing of a namespace it
        # may not read.
        if refused := _refused(state, reader, namespace):
            return refused
        agent = state.agent_named(namespace, str(req["name"]))
    if agent is None:
        return {"error": "agent not found", "code": "not_found"}
    # By id: the agent's namespace, once it is found (as the HTTP API's `/v1/agents/{id}`).
    if refused := _refused(state, reader, agent.namespace):
        return refused
    return AgentAnswer(agent=agent_detail(agent))


@_spanning("list the pods")
def _pods_list(state: HiveState, req: dict[str, Any], reader: Reader) -> PodsAnswer:
    return PodsAnswer(
        pods=[pod_view(p) for p in sorted(state.pods.values(), key=lambda p: p.pod_id)]
    )


def _namespaces_list(state: HiveState, req: dict[str, Any], reader: Reader) -> NamespacesAnswer:
    return NamespacesAnswer(
        namespaces=[
            NamespaceView(
                name=ns.name,
                quota=ns.quota,
                agents=sum(
                    1 for a in state.agents.values() if a.namespace == ns.name and not a.deleted
                ),
            )
            for ns in sorted(state.namespaces.values(), key=lambda n: n.name)
            if reader.reads(state.grants, ns.name)
        ]
    )


def _access_list(state: HiveState, req: dict[str, Any], reader: Reader) -> AccessAnswer:
    return AccessAnswer(
        grants=[
            _shown(GrantView, g)
            for g in sorted(state.grants, key=lambda g: (g.user, g.namespace or ""))
            # A user's own grants alone: who else acts where is the owner's business.
            if reader.user is None or g.user == reader.user
        ]
    )


def _digest(state: HiveState, req: dict[str, Any], reader: Reader) -> dict[str, Any]:
    # A hash tells nothing of the state: every principal's, as the status that carries it.
    return {"digest": state.digest()}


@_spanning("read the whole state")
def _full(state: HiveState, req: dict[str, Any], reader: Reader) -> dict[str, Any]:
    return {"state": state.to_dict()}


@_spanning("list the webhooks")
def _webhooks_list(state: HiveState, req: dict[str, Any], reader: Reader) -> WebhooksAnswer:
    return WebhooksAnswer(
        webhooks=[
            _shown(WebhookView, w)
            for w in sorted(state.webhooks.values(), key=lambda w: w.webhook_id)
            if not w.removed
        ]
    )


def rendered(answer: Answer | dict[str, Any]) -> dict[str, Any]:
    """An answer as it goes on the wire (JSON types, field aliases)."""
    if isinstance(answer, Answer):
        return answer.model_dump(mode="json", by_alias=True)
    return answer


QUERIES: dict[str, Query] = {
    names.QUERY_AGENTS_LIST: _agents_list,
    names.QUERY_AGENTS_GET: _agents_get,
    names.QUERY_PODS_LIST: _pods_list,
    names.QUERY_NAMESPACES_LIST: _namespaces_list,
    names.QUERY_ACCESS_LIST: _access_list,
    names.QUERY_DIGEST: _digest,
    names.QUERY_STATE: _full,
    names.QUERY_WEBHOOKS_LIST: _webhooks_list,
}


async def serve(
    log_: EventLog,
    raft: ReplicatedState,
    node: str,
    status: Callable[..., dict[str, Any]],
    principals: Principals | None = None,
) -> list[Subscription]:
    """Subscribe the query handlers; returns the subscriptions (close them to stop). With
    `principals`, each query is answered as its signer's (see the module's docstring)."""
    guard = QueryGuard(principals) if principals is not None else None

    def reader_of(msg: Message) -> Reader | str:
        """Whom `msg` asks for, or why it is answered nothing (`unauthenticated: …`)."""
        if guard is None:
            return Reader()
        asker = guard.asker(msg)
        return asker if isinstance(asker, str) else Reader.of(asker.role, asker.name)

    def handler(query: Query) -> Callable[[Message], Awaitable[None]]:
        async def respond(msg: Message) -> None:
            reader = reader_of(msg)
            if isinstance(reader, str):
                await log_.respond(
                    msg, json.dumps(unauthenticated(reader) | {"node": node}).encode()
                )
                return
            try:
                req = json.loads(msg.data) if msg.data else {}
                if not isinstance(req, dict):
                    raise ValueError("query body must be a JSON object")
                with raft.lock:
                    typed = query(raft.hive, req, reader)
                    applied = raft.hive.applied_seq
                # The views hold copies: rendered outside the lock that folding needs.
                answer = rendered(typed)
                answer["applied_seq"] = applied
            except ValueError as exc:
                answer = {"error": f"bad query: {exc}", "code": "bad_request"}
            answer["node"] = node
            await log_.respond(msg, json.dumps(answer).encode())

        return respond

    async def respond_status(msg: Message) -> None:
        reader = reader_of(msg)
        if isinstance(reader, str):
            await log_.respond(msg, json.dumps(unauthenticated(reader) | {"node": node}).encode())
            return
        try:
            req = json.loads(msg.data) if msg.data else {}
        except ValueError:
            req = {}
        want_digest = isinstance(req, dict) and bool(req.get("digest"))
        await log_.respond(msg, json.dumps(status(digest=want_digest)).encode())

    subs = [
        await log_.subscribe(subject, handler(q), queue=names.QUERY_QUEUE)
        for subject, q in QUERIES.items()
    ]
    subs.append(await log_.subscribe(names.QUERY_STATUS, respond_status, queue=names.QUERY_QUEUE))
    subs.append(await log_.subscribe(f"{names.QUERY_STATUS}.{node}", respond_status))
    return subs
