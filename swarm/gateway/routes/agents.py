"""Agents: list, describe, deploy, scale, roll out, roll back, stop, delete (as `swarm agent`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from schemas import Payload, commands, names
from swarm.client import history
from swarm.gateway.models import (
    NAME_PATTERN,
    AgentDetail,
    AgentList,
    CommandResult,
    DeployRequest,
    LoggedEvent,
    RollbackRequest,
    RolloutRequest,
    ScaleRequest,
    StopRequest,
)
from swarm.gateway.problems import responses
from swarm.gateway.routes.common import (
    AUTHENTICATED,
    COMMAND_PROBLEMS,
    COMMON_PROBLEMS,
    GatewayDep,
    NamePath,
    NamespacePath,
    TimeoutQuery,
    WaitQuery,
)

router = APIRouter(
    prefix="/v1", tags=["agents"], dependencies=AUTHENTICATED, responses=COMMON_PROBLEMS
)


@router.get("/agents", response_model=AgentList, summary="List agents")
async def list_agents(
    gw: GatewayDep,
    namespace: Annotated[
        str | None,
        Query(pattern=NAME_PATTERN, max_length=52, description="Only this namespace's agents."),
    ] = None,
) -> AgentList:
    """Agents (not deleted) of every namespace, or of one."""
    queries = gw.queries
    floor = await gw.floor()
    agents = await queries.agent_views(namespace, at_least=floor)
    return AgentList(agents=agents, applied_seq=queries.applied_seq)


@router.get(
    "/namespaces/{namespace}/agents/{name}",
    response_model=AgentDetail,
    responses=responses(404),
    summary="Describe an agent",
)
async def get_agent(
    gw: GatewayDep,
    namespace: NamespacePath,
    name: NamePath,
    events: Annotated[int, Query(ge=0, le=100, description="How many recent events.")] = 10,
) -> AgentDetail:
    """One agent: spec (without module bytes), replicas, versions, rollout in progress, and its
    most recent events (as `swarm agent describe`)."""
    queries = gw.queries
    floor = await gw.floor()
    agent = await queries.agent_detail(namespace, name, at_least=floor)
    recent = []
    if events and names.is_token(agent.agent_id):
        recent = await history.recent_events(
            gw.log, "agent", agent.agent_id, agent.last_seq, events
        )
    return AgentDetail(
        agent=agent,
        applied_seq=queries.applied_seq,
        events=[LoggedEvent.of(d) for d in recent],
    )


async def _send(
    gw: GatewayDep,
    request: Request,
    payload: type[Payload],
    data: dict[str, Any],
    *,
    wait: bool,
    timeout: float | None,
    what: str,
) -> JSONResponse:
    event = gw.prepare(payload, data)
    return await gw.execute(request, event, wait=wait, timeout=timeout, what=what)


@router.post(
    "/namespaces/{namespace}/agents",
    summary="Deploy an agent",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def deploy_agent(
    gw: GatewayDep,
    request: Request,
    namespace: NamespacePath,
    body: DeployRequest,
    wait: WaitQuery = True,
    timeout: TimeoutQuery = None,
) -> JSONResponse:
    """Deploy a new agent (`agent_id` in the answer names it)."""
    data = {"namespace": namespace, **body.model_dump(mode="json")}
    return await _send(
        gw,
        request,
        commands.DeployAgent,
        data,
        wait=wait,
        timeout=timeout,
        what=f"deploy of {namespace}/{body.name}",
    )


@router.post(
    "/namespaces/{namespace}/agents/{name}/scale",
    summary="Scale an agent",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def scale_agent(
    gw: GatewayDep,
    request: Request,
    namespace: NamespacePath,
    name: NamePath,
    body: ScaleRequest,
    wait: WaitQuery = True,
    timeout: TimeoutQuery = None,
) -> JSONResponse:
    """Change how many replicas should run."""
    data = {"namespace": namespace, "name": name, "replicas": body.replicas}
    return await _send(
        gw,
        request,
        commands.ScaleAgent,
        data,
        wait=wait,
        timeout=timeout,
        what=f"scale of {namespace}/{name}",
    )


@router.post(
    "/namespaces/{namespace}/agents/{name}/rollout",
    summary="Roll out a new version",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def rollout_agent(
    gw: GatewayDep,
    request: Request,
    namespace: NamespacePath,
    name: NamePath,
    body: RolloutRequest,
    wait: WaitQuery = True,
    timeout: TimeoutQuery = None,
) -> JSONResponse:
    """Roll out a new version: new replicas start before old ones stop."""
    data = {"namespace": namespace, "name": name, **body.model_dump(mode="json")}
    return await _send(
        gw,
        request,
        commands.RolloutAgent,
        data,
        wait=wait,
        timeout=timeout,
        what=f"rollout of {namespace}/{name}",
    )


@router.post(
    "/namespaces/{namespace}/agents/{name}/rollback",
    summary="Roll back to an earlier version",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def rollback_agent(
    gw: GatewayDep,
    request: Request,
    namespace: NamespacePath,
    name: NamePath,
    body: RollbackRequest,
    wait: WaitQuery = True,
    timeout: TimeoutQuery = None,
) -> JSONResponse:
    """Roll back to `to_version`, or to the previous version (a rollout in progress aborts)."""
    data = {"namespace": namespace, "name": name, **body.model_dump(mode="json", exclude_none=True)}
    return await _send(
        gw,
        request,
        commands.RollbackAgent,
        data,
        wait=wait,
        timeout=timeout,
        what=f"rollback of {namespace}/{name}",
    )


@router.post(
    "/namespaces/{namespace}/agents/{name}/stop",
    summary="Stop an agent",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def stop_agent(
    gw: GatewayDep,
    request: Request,
    namespace: NamespacePath,
    name: NamePath,
    body: StopRequest,
    wait: WaitQuery = True,
    timeout: TimeoutQuery = None,
) -> JSONResponse:
    """Stop every replica; the agent and its versions are kept (scale starts it again)."""
    data = {"namespace": namespace, "name": name, "reason": body.reason}
    return await _send(
        gw,
        request,
        commands.StopAgent,
        data,
        wait=wait,
        timeout=timeout,
        what=f"stop of {namespace}/{name}",
    )


@router.delete(
    "/namespaces/{namespace}/agents/{name}",
    summary="Delete an agent",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def delete_agent(
    gw: GatewayDep,
    request: Request,
    namespace: NamespacePath,
    name: NamePath,
    wait: WaitQuery = True,
    timeout: TimeoutQuery = None,
) -> JSONResponse:
    """Stop every replica and remove the agent (its events stay in the log)."""
    data = {"namespace": namespace, "name": name}
    return await _send(
        gw,
        request,
        commands.DeleteAgent,
        data,
        wait=wait,
        timeout=timeout,
        what=f"delete of {namespace}/{name}",
    )
