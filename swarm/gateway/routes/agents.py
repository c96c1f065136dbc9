"""Agents: list, describe, deploy, scale, roll out, roll back, stop, delete, quarantine,
release, autoscale (as `swarm agent`), each a verb of the client (`swarm.client.swarm`).

A user's token lists and describes the agents of the namespaces where it holds a role alone
(`swarm.gateway.access`); its commands are the Hive's to judge."""

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
    DeployRequest,
    LoggedEvent,
    ReasonRequest,
    RollbackRequest,
    RolloutRequest,
    ScaleRequest,
    StopRequest,
)
from swarm.gateway.routes.common import (
    AGENT_PATH,
    ActingDep,
    AgentCallDep,
    AgentDep,
    CommandDep,
    GatewayDep,
    NamespacePath,
    command_route,
    judged,
    read_route,
    v1_router,
)

router = v1_router("agents")


@router.get("/agents", response_model=AgentList, summary="List agents")
@judged
async def list_agents(
    acting: ActingDep,
    namespace: Annotated[
        str | None,
        Query(pattern=NAME_PATTERN, max_length=52, description="Only this namespace's agents."),
    ] = None,
) -> AgentList:
    """Agents (not deleted) of every namespace, or of one; for a user's token, of the
    namespaces where the user holds a role (403 for another named)."""
    if namespace is not None:
        await acting.require(namespace, f"read namespace {namespace}")
    readable = await acting.readable()
    queries = await acting.swarm.queries()
    agents = await queries.agent_views(namespace, at_least=await acting.swarm.floor())
    return AgentList(
        agents=[a for a in agents if readable(a.namespace)], applied_seq=queries.applied_seq
    )


@read_route(router.get, AGENT_PATH, AgentDetail, summary="Describe an agent")
@judged
async def get_agent(
    gw: GatewayDep,
    acting: ActingDep,
    agent: AgentDep,
    events: Annotated[int, Query(ge=0, le=100, description="How many recent events.")] = 10,
) -> AgentDetail:
    """One agent: spec (without module bytes), replicas, versions, rollout in progress, and its
    most recent events (as `swarm agent describe`)."""
    await acting.require(agent.namespace, f"read namespace {agent.namespace}")
    queries = await gw.swarm.queries()
    detail = await queries.agent_detail(
        agent.namespace, agent.name, at_least=await gw.swarm.floor()
    )
    recent = []
    if events and names.is_token(detail.agent_id):
        recent = await history.recent_events(
            gw.log, "agent", detail.agent_id, detail.last_seq, events
        )
    return AgentDetail(
        agent=detail,
        applied_seq=queries.applied_seq,
        events=[LoggedEvent.of(d) for d in recent],
    )


@command_route(router.post, "/namespaces/{namespace}/agents", summary="Deploy an agent")
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


@command_route(router.post, f"{AGENT_PATH}/scale", summary="Scale an agent")
async def scale_agent(body: ScaleRequest, call: AgentCallDep) -> JSONResponse:
    """Change how many replicas should run."""
    return await call.answer(call.agents.scale, replicas=body.replicas, timeout=call.timeout)


@command_route(router.post, f"{AGENT_PATH}/rollout", summary="Roll out a new version")
async def rollout_agent(body: RolloutRequest, call: AgentCallDep) -> JSONResponse:
    """Roll out a new version: new replicas start before old ones stop."""
    spec = body.spec.model_dump(mode="json")
    return await call.answer(
        call.agents.rollout, spec, max_surge=body.max_surge, timeout=call.timeout
    )


@command_route(router.post, f"{AGENT_PATH}/rollback", summary="Roll back to an earlier version")
async def rollback_agent(body: RollbackRequest, call: AgentCallDep) -> JSONResponse:
    """Roll back to `to_version`, or to the previous version (a rollout in progress aborts)."""
    return await call.answer(call.agents.rollback, to_version=body.to_version, timeout=call.timeout)


@command_route(router.post, f"{AGENT_PATH}/stop", summary="Stop an agent")
async def stop_agent(body: StopRequest, call: AgentCallDep) -> JSONResponse:
    """Stop every replica; the agent and its versions are kept (scale starts it again)."""
    return await call.answer(call.agents.stop, reason=body.reason, timeout=call.timeout)


@command_route(router.delete, AGENT_PATH, summary="Delete an agent")
async def delete_agent(call: AgentCallDep) -> JSONResponse:
    """Stop every replica and remove the agent (its events stay in the log)."""
    return await call.answer(call.agents.delete, timeout=call.timeout)


@command_route(router.post, f"{AGENT_PATH}/quarantine", summary="Quarantine an agent")
async def quarantine_agent(body: ReasonRequest, call: AgentCallDep) -> JSONResponse:
    """Stop giving the agent messages and tasks (as `swarm agent quarantine`); it keeps running."""
    return await call.answer(call.agents.quarantine, reason=body.reason, timeout=call.timeout)


@command_route(router.post, f"{AGENT_PATH}/release", summary="Release a quarantined agent")
async def release_agent(body: ReasonRequest, call: AgentCallDep) -> JSONResponse:
    """End the agent's quarantine (as `swarm agent release`): it gets messages again."""
    return await call.answer(call.agents.release, reason=body.reason, timeout=call.timeout)


@command_route(
    router.put, f"{AGENT_PATH}/autoscale", summary="Set or remove an agent's autoscaling policy"
)
async def autoscale_agent(body: AutoscaleRequest, call: AgentCallDep) -> JSONResponse:
    """Replace the agent's autoscaling policy (null: stop autoscaling; replicas stay)."""
    policy = None if body.autoscale is None else body.autoscale.model_dump(mode="json")
    return await call.answer(call.agents.autoscale, policy, timeout=call.timeout)
