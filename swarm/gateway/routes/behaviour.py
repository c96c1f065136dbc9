"""Agents that behave alike, as `swarm observe similar` (the Observer's vectors in Postgres)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import psycopg
from fastapi import APIRouter, Query

from services.observer.behaviour import BehaviourStore
from swarm.gateway.models import SimilarAgent, SimilarAgents
from swarm.gateway.problems import ProblemError, responses
from swarm.gateway.routes.common import (
    AUTHENTICATED,
    COMMON_PROBLEMS,
    GatewayDep,
    NamePath,
    NamespacePath,
)

router = APIRouter(prefix="/v1", dependencies=AUTHENTICATED, responses=COMMON_PROBLEMS)


@router.get(
    "/namespaces/{namespace}/agents/{name}/similar",
    response_model=SimilarAgents,
    responses=responses(404),
    tags=["agents"],
    summary="Agents that behave alike",
)
async def similar_agents(
    gw: GatewayDep,
    namespace: NamespacePath,
    name: NamePath,
    k: Annotated[int, Query(ge=1, le=1000, description="How many agents.")] = 5,
) -> SimilarAgents:
    """The `k` agents whose latest behaviour vector (one per agent per Observer window) is
    nearest by cosine distance to this agent's. Needs the API to have a database
    (`SWARM_DATABASE_URL`; 503 without); 404 while the Observer has recorded nothing for it."""
    if not gw.database_url:
        raise ProblemError(
            503,
            "unavailable",
            "No database",
            "behaviour vectors live in Postgres, and the API has no SWARM_DATABASE_URL",
        )
    try:
        found = await asyncio.to_thread(_similar, gw.database_url, f"{namespace}/{name}", k)
    except psycopg.Error as exc:
        raise ProblemError(
            503, "unavailable", "Database unavailable", f"database: {exc}".strip()
        ) from None
    if found is None:
        raise ProblemError(
            404,
            "not-found",
            "Not found",
            f"no behaviour recorded for agent {namespace}/{name} (the Observer records a vector "
            "per agent per window once it runs)",
        )
    return found


def _similar(database_url: str, key: str, k: int) -> SimilarAgents | None:
    # psycopg's blocking API, in a worker thread: one short-lived connection per request.
    store = BehaviourStore(database_url)
    try:
        agent_id = store.resolve(key)
        if agent_id is None:
            return None
        rows = store.similar(agent_id, k)
    finally:
        store.close()
    return SimilarAgents(
        agent_id=agent_id,
        similar=[
            SimilarAgent(
                agent_id=r.agent_id,
                namespace=r.namespace,
                name=r.name,
                distance=round(r.distance, 6),
                window_end=r.window_end,
            )
            for r in rows
        ],
    )
