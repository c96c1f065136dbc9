"""A Swarm service (pod, scheduler, autoscaler, Observer, webhook dispatcher) run as a task of the
test's own event loop, so a test can reach into it while it runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol


class LoopService(Protocol):
    """What the services above share: `run()` until `stop()`, and `live` once serving."""

    live: asyncio.Event

    async def run(self) -> None: ...

    def stop(self) -> None: ...


@asynccontextmanager
async def in_this_loop(
    service: LoopService, *, live_within: float | None = 10, stop_within: float = 10
) -> AsyncIterator[asyncio.Task[None]]:
    """`service.run()` as a task until the block ends: live within `live_within` seconds (None:
    not waited for), then stopped, its task ending within `stop_within` seconds (a service that
    takes longer fails the test). A task the test cancelled (a pod killed abruptly) has ended
    already."""
    task = asyncio.create_task(service.run())
    try:
        if live_within is not None:
            await asyncio.wait_for(service.live.wait(), live_within)
        yield task
    finally:
        service.stop()
        if not task.cancelled():
            await asyncio.wait_for(task, stop_within)
