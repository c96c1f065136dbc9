"""Queueing a task on a named task queue (`swarm task send`, `POST /v1/tasks/{queue}`).

A task is stored in SWARM_TASKS (a work queue) on `swarm.task.<queue>` until the scheduler's
distributor has handed it to a replica that answered; the task id is its JetStream message id, so
a publish retried with the same id is stored once.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import names, new_id
from swarm.client.errors import INVALID, ClientError
from swarm.kernel.eventlog import AppendRequest, EventLog

__all__ = ["Queued", "check_queue", "queue_task"]


@dataclass(frozen=True, slots=True)
class Queued:
    task_id: str
    queue: str
    #: Where the task landed in SWARM_TASKS.
    seq: int
    #: JetStream had the id already: the first publish is the task.
    duplicate: bool


def check_queue(queue: str) -> None:
    if not names.is_token(queue):
        raise ClientError(f"task queue {queue!r} must match {names.TOKEN_PATTERN}", code=INVALID)


async def queue_task(
    log: EventLog,
    queue: str,
    body: bytes,
    *,
    reply_to: str | None = None,
    task_id: str | None = None,
) -> Queued:
    """Store one task on `queue`; `reply_to` is the inbox the handling replica answers on."""
    check_queue(queue)
    task_id = task_id or new_id()
    extra = {names.HEADER_TASK_REPLY: reply_to} if reply_to is not None else {}
    stored = await log.append_raw(
        AppendRequest(names.task_subject(queue), body, task_id, extra_headers=extra)
    )
    return Queued(task_id=task_id, queue=queue, seq=stored.seq, duplicate=stored.duplicate)
