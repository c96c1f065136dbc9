"""The leader proposes, through Raft, which stretch of SWARM_EVENTS every replica folds next.

It takes contiguous runs of events from the replica's `LogCache` (filled by its feeder) and
proposes each as `apply_range(lo, hi, digests)`: positions and per-event digests, not the
events (every replica reads those from the log itself, see `raft.py`). Ranges are submitted
pipelined (several in flight); folding is idempotent by sequence, so after any failure the
projector simply starts again from what the agreed state has taken.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

import structlog

from services.hive.logcache import digest_of
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
        next_seq = self.raft.queued_seq + 1
        pending: deque[asyncio.Task[int]] = deque()
        try:
            while still_leader():
                run = self.raft.cache.run(next_seq, self.batch)
                if run:
                    lo, hi = run[0][0], run[-1][0]
                    digests = b"".join(digest_of(raw) for _, raw in run)
                    pending.append(
                        asyncio.create_task(self.raft.submit(lo, hi, digests, self.submit_timeout))
                    )
                    next_seq = hi + 1
                else:
                    await asyncio.sleep(0.005)  # nothing new read yet
                while pending and (pending[0].done() or len(pending) >= self.in_flight):
                    await pending.popleft()
        finally:
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, RaftError, asyncio.TimeoutError):
                    await task
