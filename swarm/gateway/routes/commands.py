"""Any registered command, as `swarm publish` sends it, and a command's outcome by id.

`webhook.add` is the exception: its secret must be stored before it is sent, which only
`POST /v1/webhooks` does, so it is refused here with a problem pointing there.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query, Request
from fastapi.responses import JSONResponse

from schemas import REGISTRY
from swarm.client import commands, webhooks
from swarm.client.errors import ClientError, FieldProblem
from swarm.gateway.models import CommandDocument, CommandResult, SchemaEntry, SchemaList
from swarm.gateway.problems import ProblemError, responses
from swarm.gateway.routes.common import (
    ActingDep,
    GatewayDep,
    TimeoutQuery,
    WaitQuery,
    command_route,
    judged,
    read_route,
    v1_router,
)
from swarm.gateway.service import API_SOURCE, invalid_command

router = v1_router("commands")


@command_route(router.post, "/commands")
async def send_command(
    gw: GatewayDep,
    acting: ActingDep,
    request: Request,
    body: CommandDocument,
    wait: WaitQuery = True,
    timeout: TimeoutQuery = None,
    validate: Annotated[
        bool,
        Query(description="Check the command against its schema first; false lets the Hive judge."),
    ] = True,
) -> JSONResponse:
    """Send any command (a CloudEvent, or `{type, data}`); its `id` makes a re-send idempotent.
    It acts as the token's caller: the API's identity for the owner's token, `user:<name>`
    (signed with the user's key) for a user's."""
    document = body.model_dump(mode="json", exclude_none=True)
    plain_problem = webhooks.plain_command_problem(document.get("type"))
    if plain_problem is not None:
        # Sent as is, the subscription would have no stored secret (the body has only a
        # fingerprint); POST /v1/webhooks stores one first and shows it.
        raise _not_sent(
            f"{plain_problem}; add webhooks with POST /v1/webhooks",
            FieldProblem("body.type", "use POST /v1/webhooks", "route"),
            command_id=document.get("id"),
        )
    identity = acting.identity
    if document.get("identity", identity) != identity:
        raise _not_sent(
            f"identity is the token's ({identity}); leave it out",
            FieldProblem("body.identity", "not the identity this token acts as", "identity"),
        )
    try:
        event = commands.build_command(document, identity=identity, source=API_SOURCE)
        if validate:
            commands.validate_command(event)
    except ClientError as exc:
        raise invalid_command(exc, command_id=document.get("id")) from None
    return await gw.execute(
        request, acting, event, wait=wait, timeout=timeout, what=str(event["type"])
    )


@read_route(router.get, "/commands/{command_id}", CommandResult, name="get_command")
@judged
async def get_command(
    gw: GatewayDep,
    acting: ActingDep,
    command_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")],
) -> CommandResult:
    """A command's outcome: accepted or rejected, or pending (sent by this API, no outcome yet).
    A user's token reads the outcomes of the user's own commands (else it needs a role in every
    namespace)."""
    return await gw.lookup(acting, command_id)


@router.get("/schemas", response_model=SchemaList, tags=["schemas"])
@judged
async def list_schemas() -> SchemaList:
    """The command and event types this API knows, with their schema versions."""
    return SchemaList(
        schemas=[SchemaEntry(type=e.type, kind=e.kind, version=e.model.VERSION) for e in REGISTRY]
    )


@router.get("/schemas/{type_name}", responses=responses(404), tags=["schemas"])
@judged
async def get_schema(
    type_name: Annotated[str, Path(max_length=256, description="e.g. swarm.cmd.agent.deploy")],
) -> dict[str, Any]:
    """The JSON Schema of one command's or event's `data`."""
    entry = REGISTRY.get(type_name)
    if entry is None:
        raise ProblemError(404, "not-found", "Not found", f"no command or event type {type_name}")
    return entry.model.model_json_schema()


def _not_sent(detail: str, problem: FieldProblem, *, command_id: str | None = None) -> ProblemError:
    """A command this route refuses to send, as the same 422 problem as one the client layer
    refused to build (`invalid_command`)."""
    return ProblemError(
        422, "invalid-command", "Invalid command", detail, errors=[problem], command_id=command_id
    )
