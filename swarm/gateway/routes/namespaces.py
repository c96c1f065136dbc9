"""Namespaces (list, create, update their quota) and pods (list), as `swarm namespace|pod`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from schemas import commands
from swarm.gateway.models import (
    CommandResult,
    NamespaceCreateRequest,
    NamespaceList,
    NamespaceUpdateRequest,
    PodList,
)
from swarm.gateway.problems import ProblemError
from swarm.gateway.routes.common import (
    AUTHENTICATED,
    COMMAND_PROBLEMS,
    COMMON_PROBLEMS,
    GatewayDep,
    NamespacePath,
    TimeoutQuery,
    WaitQuery,
)

router = APIRouter(prefix="/v1", dependencies=AUTHENTICATED, responses=COMMON_PROBLEMS)


@router.get("/namespaces", response_model=NamespaceList, tags=["namespaces"])
async def list_namespaces(gw: GatewayDep) -> NamespaceList:
    """Namespaces with their quotas and how many agents each holds."""
    queries = gw.queries
    floor = await gw.floor()
    spaces = await queries.namespace_views(at_least=floor)
    return NamespaceList(namespaces=spaces, applied_seq=queries.applied_seq)


@router.post(
    "/namespaces",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
    tags=["namespaces"],
)
async def create_namespace(
    gw: GatewayDep,
    request: Request,
    body: NamespaceCreateRequest,
    wait: WaitQuery = True,
    timeout: TimeoutQuery = None,
) -> JSONResponse:
    """Create a namespace; limits left out are unlimited."""
    event = gw.prepare(commands.CreateNamespace, body.model_dump(mode="json", exclude_none=True))
    return await gw.execute(
        request, event, wait=wait, timeout=timeout, what=f"creating namespace {body.name}"
    )


@router.patch(
    "/namespaces/{namespace}",
    response_model=CommandResult,
    responses=COMMAND_PROBLEMS,
    tags=["namespaces"],
)
async def update_namespace(
    gw: GatewayDep,
    request: Request,
    namespace: NamespacePath,
    body: NamespaceUpdateRequest,
    wait: WaitQuery = True,
    timeout: TimeoutQuery = None,
) -> JSONResponse:
    """Change some limits of a namespace's quota (null: unlimited); the others stay.

    The command replaces the whole quota, so the current one is read first, as `swarm namespace
    update` does; two updates at the same moment can overwrite each other's limits.
    """
    changes = {key: getattr(body.quota, key) for key in body.quota.model_fields_set}
    known = await gw.queries.namespaces(at_least=await gw.floor())
    current = next((ns for ns in known if ns.get("name") == namespace), None)
    if current is None:
        raise ProblemError(404, "not-found", "Not found", f"namespace {namespace} not found")
    old = current.get("quota")
    merged = {**(old if isinstance(old, dict) else {}), **changes}
    quota = {key: value for key, value in merged.items() if value is not None}
    event = gw.prepare(commands.UpdateNamespace, {"name": namespace, "quota": quota})
    return await gw.execute(
        request, event, wait=wait, timeout=timeout, what=f"updating namespace {namespace}"
    )


@router.get("/pods", response_model=PodList, tags=["pods"])
async def list_pods(gw: GatewayDep) -> PodList:
    """Pods with their capacity, what is free, and the replicas placed on them."""
    queries = gw.queries
    floor = await gw.floor()
    pods = await queries.pod_views(at_least=floor)
    return PodList(pods=pods, applied_seq=queries.applied_seq)
