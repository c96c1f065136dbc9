"""Webhooks: list, add (the secret shown once), remove, deliveries and dead letters, redeliver
(as `swarm webhook`).

Webhooks see every event: a user's token needs a role in every namespace to use these routes,
and the Hive's admin role in every namespace to change them.

Adding is not a plain command: the client layer (`swarm.client.webhooks`) stores the signing
secret before it sends `webhook.add`, and deletes it if the Hive says no. `POST /v1/commands`
therefore refuses `webhook.add` and points here.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query, Request
from fastapi.responses import JSONResponse

from schemas.names import TOKEN_PATTERN
from swarm.client import webhooks
from swarm.client.errors import ClientError, FieldProblem
from swarm.gateway.models import (
    RedeliverRequest,
    Redelivery,
    RedeliveryResult,
    WebhookCreated,
    WebhookCreateRequest,
    WebhookDeliveries,
    WebhookList,
)
from swarm.gateway.problems import ProblemError, responses
from swarm.gateway.routes.common import (
    COMMAND_PROBLEMS,
    ActingDep,
    CommandDep,
    GatewayDep,
    TimeoutQuery,
    WaitQuery,
    command_route,
    v1_router,
)
from swarm.gateway.service import (
    API_SOURCE,
    invalid_command,
    pending_result,
    rejection,
    result_of,
)

router = v1_router("webhooks")

WebhookIdPath = Annotated[str, Path(pattern=TOKEN_PATTERN, description="The webhook's id.")]
#: A response carrying a secret must not be kept by any cache on the way.
_NO_STORE = {"Cache-Control": "no-store"}


@router.get("/webhooks", response_model=WebhookList, summary="List webhooks")
async def list_webhooks(gw: GatewayDep) -> WebhookList:
    """The subscriptions (not removed): URL, filter, attempts, the secret's fingerprint."""
    queries = await gw.swarm.queries()
    floor = await gw.swarm.floor()
    hooks = await webhooks.subscriptions(queries, at_least=floor)
    return WebhookList(webhooks=hooks, applied_seq=queries.applied_seq)


@router.post(
    "/webhooks",
    response_model=WebhookCreated,
    summary="Add a webhook",
    responses={
        **COMMAND_PROBLEMS,
        202: {
            "model": WebhookCreated,
            "description": (
                "Sent with `?wait=false`, or no outcome within the timeout: pending (the secret "
                "is stored and shown now all the same); poll the `Location` for the outcome."
            ),
        },
    },
)
async def add_webhook(body: WebhookCreateRequest, call: CommandDep) -> JSONResponse:
    """Subscribe `url` to the events matching `filter` (as `swarm webhook add`).

    The signing secret is stored before the command is sent and never goes on the log; a
    generated one is in the answer this once (`secret`). A rejected subscription's secret is
    deleted again.
    """
    try:
        new = webhooks.new_webhook(
            body.url,
            body.filter,
            secret=body.secret.get_secret_value() if body.secret is not None else None,
            max_attempts=body.max_attempts,
            description=body.description,
            identity=call.acting.identity,
            source=API_SOURCE,
        )
    except ClientError as exc:
        raise invalid_command(exc) from None
    call.gw.check_size(new.command)
    location = call.gw.location(call.request, new.webhook_id)
    sent, issued = await call.send(new.command, new_webhook=new)
    if issued is not None and not issued.accepted:
        raise rejection(issued.outcome, command_id=sent.id, what=f"adding webhook {body.url}")
    created = WebhookCreated(
        webhook_id=new.webhook_id,
        url=body.url,
        filter=body.filter,
        max_attempts=body.max_attempts,
        description=body.description,
        secret_fingerprint=str(new.data["secret_fingerprint"]),
        # Shown when pending too: the secret is stored and will not be shown again.
        secret=new.secret if new.generated else None,
        command=pending_result(sent) if issued is None else result_of(issued),
    )
    return JSONResponse(
        created.model_dump(mode="json"),
        status_code=202 if issued is None else 200,
        headers={"Location": location, **_NO_STORE},
    )


@command_route(router.delete, "/webhooks/{webhook_id}", summary="Remove a webhook")
async def remove_webhook(
    gw: GatewayDep,
    acting: ActingDep,
    request: Request,
    webhook_id: WebhookIdPath,
    reason: Annotated[str, Query(max_length=200, description="Why, for the log.")] = "",
    wait: WaitQuery = True,
    timeout: TimeoutQuery = None,
) -> JSONResponse:
    """Stop sending to a webhook; once the Hive accepts, its secret is deleted."""
    try:
        command = webhooks.remove_command(
            webhook_id, reason, identity=acting.identity, source=API_SOURCE
        )
    except ClientError as exc:
        raise invalid_command(exc) from None
    return await gw.execute(
        request,
        acting,
        command,
        wait=wait,
        timeout=timeout,
        what=f"removing webhook {webhook_id}",
    )


@router.get(
    "/webhooks/deliveries", response_model=WebhookDeliveries, summary="Deliveries and dead letters"
)
async def list_deliveries(
    gw: GatewayDep,
    subscription: Annotated[
        str | None, Query(pattern=TOKEN_PATTERN, description="Only this webhook's.")
    ] = None,
    dead: Annotated[
        bool, Query(description="The dead letters (events given up on) instead of the attempts.")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=1000, description="The most recent this many.")] = 50,
) -> WebhookDeliveries:
    """Delivery attempts (outcome, status code, latency, error), or the dead letters; oldest
    first (as `swarm webhook deliveries`)."""
    if dead:
        letters = await webhooks.dead_letters(gw.log, subscription)
        return WebhookDeliveries(dead_letters=letters[-limit:])
    return WebhookDeliveries(deliveries=await webhooks.attempts(gw.log, subscription, limit))


@router.post(
    "/webhooks/redeliver",
    response_model=RedeliveryResult,
    summary="Send dead letters again",
    responses={
        202: {
            "model": RedeliveryResult,
            "description": (
                "Sent with `?wait=false`, or some request had no outcome within the timeout: "
                "poll each `command_id` at `/v1/commands/{id}`."
            ),
        },
        **responses(404, 409, 413),
    },
)
async def redeliver(body: RedeliverRequest, call: CommandDep) -> JSONResponse:
    """Send dead-lettered events again: those named, or all (of one webhook); one
    `webhook.redeliver` command per webhook (as `swarm webhook redeliver`)."""
    try:
        plan = await webhooks.plan_redelivery(
            call.gw.log,
            event_ids=body.event_ids,
            all_dead=body.all_dead,
            subscription=body.subscription,
            identity=call.acting.identity,
            source=API_SOURCE,
        )
    except webhooks.NotDeadLettered as exc:
        raise ProblemError(
            404,
            "not-found",
            "Not found",
            exc.message,
            errors=[
                FieldProblem(f"body.event_ids.{body.event_ids.index(e)}", "not dead-lettered", "")
                for e in exc.missing
            ],
        ) from None
    for planned in plan:
        call.gw.check_size(planned.command)
    done: list[Redelivery] = []
    for planned in plan:
        sent, issued = await call.send(planned.command)
        if issued is not None and not issued.accepted:
            earlier = f" ({len(done)} earlier request(s) were sent)" if done else ""
            raise rejection(
                issued.outcome,
                command_id=sent.id,
                what=f"redelivering to webhook {planned.webhook_id}{earlier}",
            )
        done.append(
            Redelivery(
                webhook_id=planned.webhook_id,
                event_ids=list(planned.event_ids),
                command=pending_result(sent) if issued is None else result_of(issued),
            )
        )
    pending = any(r.command.status == "pending" for r in done)
    return JSONResponse(
        RedeliveryResult(requests=done).model_dump(mode="json"),
        status_code=202 if pending else 200,
    )
