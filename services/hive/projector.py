"""The leader feeds SWARM_EVENTS into Raft, so every replica folds the same events in order.

Batches are submitted pipelined (several Raft entries in flight); folding is idempotent by
sequence, so after any failure the projector simply starts reading again from the agreed state's
`applied_seq + 1`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

import structlog

from schemas import names
from services.hive.raft import RaftError, ReplicatedState
from swarm.kernel.eventlog import EventLog

log = structlog.get_logger(__name__)


class Projector:
    def __init__(
        self,
        eventlog: EventLog,
        raft: ReplicatedState,
        *,
        batch: int = 1000,
        in_flight: int = 4,
        submit_timeout: float = 0.5,
    ) -> None:
        self.log = eventlog
        self.raft = raft
        self.batch = batch
        self.in_flight = in_flight
        self.submit_timeout = submit_timeout

    async def run(self, still_leader: Callable[[], bool]) -> None:
        while still_leader():
            try:
                await self._follow(still_leader)
            except (TimeoutError, RaftError) as exc:
                log.warning(
                    "projection interrupted; resuming from the agreed state", error=str(exc)
                )
                await asyncio.sleep(0.1)

    async def _follow(self, still_leader: Callable[[], bool]) -> None:
        reader = await self.log.reader(
            names.STREAM_EVENTS, start_seq=self.raft.applied_seq + 1, batch=self.batch
        )
        pending: deque[asyncio.Task[int]] = deque()
        try:
            while still_leader():
                deliveries = await reader.fetch(self.batch, timeout=0.05)
                if deliveries:
                    batch = [(d.stream_seq, d.data) for d in deliveries]
                    pending.append(
                        asyncio.create_task(self.raft.submit(batch, self.submit_timeout))
                    )
                while pending and (pending[0].done() or len(pending) >= self.in_flight):
                    await pending.popleft()
        finally:
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, RaftError, asyncio.TimeoutError):
                    await task
            await reader.close()
