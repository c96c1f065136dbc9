"""Agents that behave alike, as `swarm observe similar` (the Observer's vectors in Postgres).

A user's token asks about an agent of a namespace where the user holds a role, and is answered
with the agents of such namespaces alone (so fewer than `k` may come back)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated

from fastapi import Query

from swarm.client import behaviour
from swarm.client.errors import ClientError
from swarm.gateway.models import SimilarAgent, SimilarAgents
from swarm.gateway.problems import ProblemError
from swarm.gateway.routes.common import (
    AGENT_PATH,
    ActingDep,
    AgentDep,
    GatewayDep,
    judged,
    read_route,
    v1_router,
)

router = v1_router()


@read_route(
    router.get,
    f"{AGENT_PATH}/similar",
    SimilarAgents,
    tags=["agents"],
    summary="Agents that behave alike",
)
@judged
async def similar_agents(
    gw: GatewayDep,
    acting: ActingDep,
    agent: AgentDep,
    k: Annotated[int, Query(ge=1, le=1000, description="How many agents.")] = 5,
) -> SimilarAgents:
    """The `k` agents whose latest behaviour vector (one per agent per Observer window) is
    nearest by cosine distance to this agent's. Needs the API to have a database
    (`SWARM_DATABASE_URL`; 503 without); 404 while the Observer has recorded nothing for it."""
    await acting.require(agent.namespace, f"read namespace {agent.namespace}")
    readable = await acting.readable()
    if not gw.database_url:
        raise ProblemError(
            503,
            "unavailable",
            "No database",
            "behaviour vectors live in Postgres, and the API has no SWARM_DATABASE_URL",
        )
    key = str(agent)
    try:
        found = await asyncio.to_thread(behaviour.similar_agents, gw.database_url, key, k)
    except behaviour.NotRecorded:
        raise ProblemError(
            404,
            "not-found",
            "Not found",
            f"no behaviour recorded for agent {key} (the Observer records a vector "
            "per agent per window once it runs)",
        ) from None
    except ClientError as exc:
        raise ProblemError(503, "unavailable", "Database unavailable", exc.message) from None
    return SimilarAgents(
        agent_id=found.agent_id,
        similar=[SimilarAgent(**asdict(r)) for r in found.similar if readable(r.namespace)],
    )
