"""Stopping asyncio tasks for sure.

`task.cancel()` followed by `await task` is not enough on Python 3.11: `asyncio.wait_for` (used
inside nats-py's fetch, request and connect) drops a cancellation that arrives while the
awaited operation is finishing, and a loop that lost its cancellation runs on, so the await never
returns. Seen in this project: a webhook dispatcher and a pod's heartbeat thread that did not
stop. `cancel_and_wait` cancels again until every task is done. Awaiting a task inside
`suppress(CancelledError)` is no answer either: it would also swallow a cancellation aimed at the
caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

#: How long to wait for cancelled tasks before cancelling the stragglers again.
RECANCEL_S = 1.0


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and return once all are done, however many cancellations that takes.

    Their outcomes stay on the tasks for the caller to read (`failure`); none is raised here,
    as with `gather(..., return_exceptions=True)`. If the caller itself is cancelled meanwhile,
    that propagates.
    """
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
    for task in tasks:
        failure(task)  # marks an error as seen: asyncio would log it as never retrieved


def failure(task: asyncio.Task[Any]) -> BaseException | None:
    """The exception a finished task ended with; None when it returned or was cancelled."""
    if task.cancelled():
        return None
    return task.exception()


__all__ = ["RECANCEL_S", "cancel_and_wait", "failure"]
