"""Agents: list, describe, deploy, scale, roll out, roll back, stop, delete, quarantine,
release, autoscale (as `swarm agent`), each a verb of the client (`swarm.client.swarm`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from fastapi.responses import JSONResponse

from schemas import names
from swarm.client import history
from swarm.gateway.models import (
    NAME_PATTERN,
    AgentDetail,
    AgentList,
    AutoscaleRequest,
    CommandResult,
    DeployRequest,
    LoggedEvent,
    ReasonRequest,
    RollbackRequest,
    RolloutRequest,
    ScaleRequest,
    StopRequest,
)
from swarm.gateway.problems import responses
from swarm.gateway.routes.common import (
    COMMAND_PROBLEMS,
    CommandDep,
    GatewayDep,
    NamePath,
    NamespacePath,
    v1_router,
)

router = v1_router("agents")


@router.get("/agents", response_model=AgentList, summary="List agents")
async def list_agents(
    gw: GatewayDep,
    namespace: Annotated[
        str | None,
        Query(pattern=NAME_PATTERN, max_length=52, description="Only this namespace's agents."),
    ] = None,
) -> AgentList:
    """Agents (not deleted) of every namespace, or of one."""
    queries = await gw.swarm.queries()
    agents = await queries.agent_views(namespace, at_least=await gw.swarm.floor())
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
    queries = await gw.swarm.queries()
    agent = await queries.agent_detail(namespace, name, at_least=await gw.swarm.floor())
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


@router.post(
    "/namespaces/{namespace}/agents",
    summary="Deploy an agent",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def deploy_agent(
    namespace: NamespacePath,
    body: DeployRequest,
    call: CommandDep,
) -> JSONResponse:
    """Deploy a new agent (`agent_id` in the answer names it)."""
    return await call.answer(
        call.swarm.agents.deploy(
            namespace,
            body.name,
            body.spec.model_dump(mode="json"),
            replicas=body.replicas,
            timeout=call.timeout,
        ),
        what=f"deploy of {namespace}/{body.name}",
    )


@router.post(
    "/namespaces/{namespace}/agents/{name}/scale",
    summary="Scale an agent",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def scale_agent(
    namespace: NamespacePath,
    name: NamePath,
    body: ScaleRequest,
    call: CommandDep,
) -> JSONResponse:
    """Change how many replicas should run."""
    return await call.answer(
        call.swarm.agents.scale(namespace, name, replicas=body.replicas, timeout=call.timeout),
        what=f"scale of {namespace}/{name}",
    )


@router.post(
    "/namespaces/{namespace}/agents/{name}/rollout",
    summary="Roll out a new version",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def rollout_agent(
    namespace: NamespacePath,
    name: NamePath,
    body: RolloutRequest,
    call: CommandDep,
) -> JSONResponse:
    """Roll out a new version: new replicas start before old ones stop."""
    return await call.answer(
        call.swarm.agents.rollout(
            namespace,
            name,
            body.spec.model_dump(mode="json"),
            max_surge=body.max_surge,
            timeout=call.timeout,
        ),
        what=f"rollout of {namespace}/{name}",
    )


@router.post(
    "/namespaces/{namespace}/agents/{name}/rollback",
    summary="Roll back to an earlier version",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def rollback_agent(
    namespace: NamespacePath,
    name: NamePath,
    body: RollbackRequest,
    call: CommandDep,
) -> JSONResponse:
    """Roll back to `to_version`, or to the previous version (a rollout in progress aborts)."""
    return await call.answer(
        call.swarm.agents.rollback(
            namespace, name, to_version=body.to_version, timeout=call.timeout
        ),
        what=f"rollback of {namespace}/{name}",
    )


@router.post(
    "/namespaces/{namespace}/agents/{name}/stop",
    summary="Stop an agent",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def stop_agent(
    namespace: NamespacePath,
    name: NamePath,
    body: StopRequest,
    call: CommandDep,
) -> JSONResponse:
    """Stop every replica; the agent and its versions are kept (scale starts it again)."""
    return await call.answer(
        call.swarm.agents.stop(namespace, name, reason=body.reason, timeout=call.timeout),
        what=f"stop of {namespace}/{name}",
    )


@router.delete(
    "/namespaces/{namespace}/agents/{name}",
    summary="Delete an agent",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def delete_agent(
    namespace: NamespacePath,
    name: NamePath,
    call: CommandDep,
) -> JSONResponse:
    """Stop every replica and remove the agent (its events stay in the log)."""
    return await call.answer(
        call.swarm.agents.delete(namespace, name, timeout=call.timeout),
        what=f"delete of {namespace}/{name}",
    )


@router.post(
    "/namespaces/{namespace}/agents/{name}/quarantine",
    summary="Quarantine an agent",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def quarantine_agent(
    namespace: NamespacePath,
    name: NamePath,
    body: ReasonRequest,
    call: CommandDep,
) -> JSONResponse:
    """Stop giving the agent messages and tasks (as `swarm agent quarantine`); it keeps running."""
    return await call.answer(
        call.swarm.agents.quarantine(namespace, name, reason=body.reason, timeout=call.timeout),
        what=f"quarantine of {namespace}/{name}",
    )


@router.post(
    "/namespaces/{namespace}/agents/{name}/release",
    summary="Release a quarantined agent",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def release_agent(
    namespace: NamespacePath,
    name: NamePath,
    body: ReasonRequest,
    call: CommandDep,
) -> JSONResponse:
    """End the agent's quarantine (as `swarm agent release`): it gets messages again."""
    return await call.answer(
        call.swarm.agents.release(namespace, name, reason=body.reason, timeout=call.timeout),
        what=f"release of {namespace}/{name}",
    )


@router.put(
    "/namespaces/{namespace}/agents/{name}/autoscale",
    summary="Set or remove an agent's autoscaling policy",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
)
async def autoscale_agent(
    namespace: NamespacePath,
    name: NamePath,
    body: AutoscaleRequest,
    call: CommandDep,
) -> JSONResponse:
    """Replace the agent's autoscaling policy (null: stop autoscaling; replicas stay)."""
    policy = None if body.autoscale is None else body.autoscale.model_dump(mode="json")
    return await call.answer(
        call.swarm.agents.autoscale(namespace, name, policy, timeout=call.timeout),
        what=f"autoscale of {namespace}/{name}",
    )
