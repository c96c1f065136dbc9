"""Read-only queries over `swarm.query.…`, answered by any replica from the agreed state.

Every answer carries `applied_seq`, the last log sequence the answering replica has folded, so a
client that just got an outcome at sequence N can tell whether the answer reflects it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog

from schemas import names, utcnow
from services.hive.raft import ReplicatedState
from swarm.domain import reputation
from swarm.domain.decide import derive_status
from swarm.domain.state import Agent, HiveState, Pod
from swarm.kernel.eventlog import EventLog, Message, Subscription

log = structlog.get_logger(__name__)


def agent_view(agent: Agent, *, detail: bool = False) -> dict[str, Any]:
    replicas = sorted(agent.replicas.values(), key=lambda r: r.replica_id)
    view: dict[str, Any] = {
        "agent_id": agent.agent_id,
        "namespace": agent.namespace,
        "name": agent.name,
        "version": agent.spec.version,
        "status": agent.status,
        "reason": agent.status_reason,
        "replicas": {
            "desired": agent.replicas_desired,
            "running": sum(r.phase == "running" for r in replicas),
            "active": len(agent.active()),
        },
        "rollout": (
            {
                "version": agent.rollout.version,
                "from": agent.rollout.from_version,
                "rollback": agent.rollout.rollback,
            }
            if agent.rollout
            else None
        ),
        "deleted": agent.deleted,
        "created_at": agent.created_at.isoformat() if agent.created_at else None,
        "last_seq": agent.last_seq,
        "autoscale": agent.autoscale.model_dump(mode="json") if agent.autoscale else None,
    }
    view.update(health_view(agent, utcnow(), detail=detail))
    if detail:
        view["spec"] = agent.spec.model_dump(mode="json", exclude={"module": {"inline"}})
        view["history"] = list(agent.history)
        view["instances"] = [
            {
                "replica_id": r.replica_id,
                "version": r.version,
                "phase": r.phase,
                "pod_id": r.pod_id,
                "reason": r.reason,
                "snapshot": r.snapshot,
                "crashes": len(r.crashes),
                "restart_at": r.restart_at.isoformat() if r.restart_at else None,
            }
            for r in replicas
        ]
        view["derived_status"] = list(derive_status(agent))
    return view


def health_view(agent: Agent, now: datetime, *, detail: bool = False) -> dict[str, Any]:
    """Trust and quarantine (every view), recent findings and healing actions (detail)."""
    rep = agent.reputation
    q = agent.quarantine
    view: dict[str, Any] = {
        "trust": round(reputation.current(rep, now), 3),
        "quarantined": (
            {"reason": q.reason, "anomaly_id": q.anomaly_id, "at": q.at.isoformat()} if q else None
        ),
    }
    if detail:
        view["reputation"] = {
            "trust": view["trust"],
            "recorded": round(rep.trust, 4),
            "at": rep.at.isoformat() if rep.at else None,
            "published": rep.published,
            "reason": rep.reason,
        }
        view["anomalies"] = [
            {
                "anomaly_id": a.anomaly_id,
                "kind": a.kind,
                "severity": a.severity,
                "score": a.score,
                "at": a.at.isoformat() if a.at else None,
                "replica_id": a.replica_id,
                "window_start": a.window_start.isoformat() if a.window_start else None,
                "summary": a.summary,
            }
            for a in agent.anomalies
        ]
        view["healing"] = [
            {
                "action": h.action,
                "reason": h.reason,
                "anomaly_id": h.anomaly_id,
                "replica_id": h.replica_id,
                "at": h.at.isoformat(),
            }
            for h in agent.actions
        ]
    return view


def pod_view(pod: Pod) -> dict[str, Any]:
    memory, fuel, slots = pod.free()
    return {
        "pod_id": pod.pod_id,
        "status": pod.status,
        "zone": pod.zone,
        "labels": dict(pod.labels),
        "energy_cost": pod.energy_cost,
        "lease_s": pod.lease_s,
        "capacity": pod.capacity.model_dump(),
        "free": {"memory_mb": memory, "fuel_per_s": fuel, "slots": slots},
        "replicas": len(pod.replicas),
        # Machine-wide findings (many agents on it deviating together), the latest last.
        "anomalies": [
            {
                "anomaly_id": a.anomaly_id,
                "scope": a.scope,
                "kind": a.kind,
                "severity": a.severity,
                "at": a.at.isoformat() if a.at else None,
                "agents": a.agents,
                "summary": a.summary,
            }
            for a in pod.anomalies
        ],
    }


def _agents_list(state: HiveState, req: dict[str, Any]) -> dict[str, Any]:
    namespace = req.get("namespace")
    agents = [
        agent_view(a)
        for a in sorted(state.agents.values(), key=lambda a: (a.namespace, a.name, a.agent_id))
        if not a.deleted and (namespace is None or a.namespace == namespace)
    ]
    return {"agents": agents}


def _agents_get(state: HiveState, req: dict[str, Any]) -> dict[str, Any]:
    agent = None
    if "agent_id" in req:
        agent = state.agents.get(str(req["agent_id"]))
    elif "name" in req:
        agent = state.agent_named(str(req.get("namespace", "default")), str(req["name"]))
    if agent is None:
        return {"error": "agent not found", "code": "not_found"}
    return {"agent": agent_view(agent, detail=True)}


def _pods_list(state: HiveState, req: dict[str, Any]) -> dict[str, Any]:
    return {"pods": [pod_view(p) for p in sorted(state.pods.values(), key=lambda p: p.pod_id)]}


def _namespaces_list(state: HiveState, req: dict[str, Any]) -> dict[str, Any]:
    return {
        "namespaces": [
            {
                "name": ns.name,
                "quota": ns.quota.model_dump(),
                "agents": sum(
                    1 for a in state.agents.values() if a.namespace == ns.name and not a.deleted
                ),
            }
            for ns in sorted(state.namespaces.values(), key=lambda n: n.name)
        ]
    }


def _digest(state: HiveState, req: dict[str, Any]) -> dict[str, Any]:
    return {"digest": state.digest()}


def _full(state: HiveState, req: dict[str, Any]) -> dict[str, Any]:
    return {"state": state.to_dict()}


def _webhooks_list(state: HiveState, req: dict[str, Any]) -> dict[str, Any]:
    return {
        "webhooks": [
            {
                "webhook_id": w.webhook_id,
                "url": w.url,
                "filter": w.filter,
                "max_attempts": w.max_attempts,
                "secret_fingerprint": w.secret_fingerprint,
                "description": w.description,
                "created_at": w.created_at.isoformat() if w.created_at else None,
                "added_seq": w.added_seq,
            }
            for w in sorted(state.webhooks.values(), key=lambda w: w.webhook_id)
            if not w.removed
        ]
    }


Query = Callable[[HiveState, dict[str, Any]], dict[str, Any]]
QUERIES: dict[str, Query] = {
    names.QUERY_AGENTS_LIST: _agents_list,
    names.QUERY_AGENTS_GET: _agents_get,
    names.QUERY_PODS_LIST: _pods_list,
    names.QUERY_NAMESPACES_LIST: _namespaces_list,
    names.QUERY_DIGEST: _digest,
    names.QUERY_STATE: _full,
    names.QUERY_WEBHOOKS_LIST: _webhooks_list,
}


async def serve(
    log_: EventLog, raft: ReplicatedState, node: str, status: Callable[..., dict[str, Any]]
) -> list[Subscription]:
    """Subscribe the query handlers; returns the subscriptions (close them to stop)."""

    def handler(query: Query) -> Callable[[Message], Awaitable[None]]:
        async def respond(msg: Message) -> None:
            try:
                req = json.loads(msg.data) if msg.data else {}
                if not isinstance(req, dict):
                    raise ValueError("query body must be a JSON object")
                with raft.lock:
                    answer = query(raft.hive, req)
                    answer["applied_seq"] = raft.hive.applied_seq
            except ValueError as exc:
                answer = {"error": f"bad query: {exc}", "code": "bad_request"}
            answer["node"] = node
            await log_.respond(msg, json.dumps(answer).encode())

        return respond

    async def respond_status(msg: Message) -> None:
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
