"""Namespaces (list, create, update their quota) and pods (list), as `swarm namespace|pod`.

A user's token lists the namespaces where the user holds a role alone; the pods span every
namespace (a role in every one: `swarm.gateway.access`)."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from swarm.gateway.models import (
    NamespaceCreateRequest,
    NamespaceList,
    NamespaceUpdateRequest,
    PodList,
)
from swarm.gateway.routes.common import (
    ActingDep,
    CommandDep,
    GatewayDep,
    NamespacePath,
    command_route,
    judged,
    v1_router,
)

router = v1_router()


@router.get("/namespaces", response_model=NamespaceList, tags=["namespaces"])
@judged
async def list_namespaces(acting: ActingDep) -> NamespaceList:
    """Namespaces with their quotas and how many agents each holds (for a user's token, those
    where the user holds a role)."""
    readable = await acting.readable()
    queries = await acting.swarm.queries()
    spaces = await queries.namespace_views(at_least=await acting.swarm.floor())
    return NamespaceList(
        namespaces=[n for n in spaces if readable(n.name)], applied_seq=queries.applied_seq
    )


@command_route(router.post, "/namespaces", tags=["namespaces"])
async def create_namespace(body: NamespaceCreateRequest, call: CommandDep) -> JSONResponse:
    """Create a namespace; limits left out are unlimited."""
    quota = body.quota.model_dump(mode="json", exclude_none=True)
    return await call.answer(
        call.swarm.namespaces.create(body.name, quota=quota, timeout=call.timeout),
        what=f"creating namespace {body.name}",
    )


@command_route(router.patch, "/namespaces/{namespace}", tags=["namespaces"])
async def update_namespace(
    namespace: NamespacePath, body: NamespaceUpdateRequest, call: CommandDep
) -> JSONResponse:
    """Change some limits of a namespace's quota (null: unlimited); the others stay.

    The command replaces the whole quota, so the current one is read first, as `swarm namespace
    update` does; two updates at the same moment can overwrite each other's limits.
    """
    # The current quota is read first: a user's token must be let read it.
    await call.acting.require(namespace, f"read namespace {namespace}")
    changes = {key: getattr(body.quota, key) for key in body.quota.model_fields_set}
    quota = await call.swarm.namespaces.quota_with(namespace, changes)
    return await call.answer(
        call.swarm.namespaces.update(namespace, quota=quota, timeout=call.timeout),
        what=f"updating namespace {namespace}",
    )


@router.get("/pods", response_model=PodList, tags=["pods"])
async def list_pods(gw: GatewayDep) -> PodList:
    """Pods with their capacity, what is free, and the replicas placed on them."""
    queries = await gw.swarm.queries()
    pods = await queries.pod_views(at_least=await gw.swarm.floor())
    return PodList(pods=pods, applied_seq=queries.applied_seq)
