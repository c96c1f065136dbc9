"""Liveness and readiness, without authentication (for orchestrators' probes)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from schemas import names
from swarm.client.eventlog import NoResponders, RequestTimeout
from swarm.gateway.models import Health
from swarm.gateway.problems import ProblemError, response_of, responses

#: No token here, but the request guard's limits on text and body size hold for every route.
router = APIRouter(tags=["health"], responses=responses(400, 413, 500))


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The API process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=responses(503))
async def readyz(request: Request) -> Health | JSONResponse:
    """Ready when NATS is connected and a Hive replica answers."""
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is None or not gateway.log.is_connected:
        return response_of(
            request, ProblemError(503, "unavailable", "Swarm unavailable", "not connected to NATS")
        )
    try:
        await gateway.log.request(names.QUERY_STATUS, b"{}", timeout=1.0)
    except (NoResponders, RequestTimeout):
        return response_of(
            request,
            ProblemError(503, "unavailable", "Swarm unavailable", "no Hive replica answers"),
        )
    return Health(status="ok", detail="NATS connected, the Hive answers")
