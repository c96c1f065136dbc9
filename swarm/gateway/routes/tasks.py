"""Queueing a task, as `swarm task send` (without `--wait`).

A task makes agents act, and a queue belongs to no namespace: a user's token needs what
messaging on a topic takes, role operator in every namespace (`policy.MESSAGE_ROLE`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Path, Request
from fastapi.responses import JSONResponse

from schemas import names
from swarm.client.access import MESSAGE_ROLE
from swarm.client.eventlog import EventLogError
from swarm.client.tasks import queue_task
from swarm.gateway.models import TaskQueued
from swarm.gateway.problems import ProblemError, responses
from swarm.gateway.routes.common import ActingDep, GatewayDep, judged, v1_router

router = v1_router()

_BODY = {
    "required": False,
    "description": "The task: any bytes, by convention JSON (an empty body is an empty task).",
    "content": {
        "application/json": {"schema": {}},
        "text/plain": {"schema": {"type": "string"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


@router.post(
    "/tasks/{queue}",
    status_code=202,
    response_model=TaskQueued,
    responses=responses(413),
    tags=["tasks"],
    summary="Queue a task",
    openapi_extra={"requestBody": _BODY},
)
@judged
async def send_task(
    gw: GatewayDep,
    acting: ActingDep,
    request: Request,
    queue: Annotated[
        str,
        Path(pattern=names.TOKEN_PATTERN, max_length=64, description="The task queue's name."),
    ],
    idempotency_key: Annotated[
        str | None,
        Header(
            pattern=names.TOKEN_PATTERN,
            max_length=64,
            description="The task's id; a task sent again with the same key is stored once.",
        ),
    ] = None,
) -> JSONResponse:
    """Store the request body as one task on `queue` (202: it is kept until a replica taking the
    queue, by listing it in its spec's `task_queues`, has handled it)."""
    await acting.require(None, f"queue a task on {queue}", needed=MESSAGE_ROLE)
    limit = gw.log.max_payload
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if limit and len(body) > limit:
            raise ProblemError(
                413, "too-large", "Task too large", f"NATS takes at most {limit:,} bytes"
            )
    try:
        queued = await queue_task(gw.log, queue, bytes(body), task_id=idempotency_key)
    except (EventLogError, TimeoutError) as exc:
        raise ProblemError(
            503, "unavailable", "Swarm unavailable", f"NATS did not store the task: {exc}"
        ) from None
    answer = TaskQueued(
        task_id=queued.task_id, queue=queued.queue, seq=queued.seq, duplicate=queued.duplicate
    )
    return JSONResponse(answer.model_dump(mode="json"), status_code=202)
