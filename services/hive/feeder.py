"""Every Hive replica reads SWARM_EVENTS itself, into its `LogCache`.

Raft carries positions and digests, not the events (`raft.py`): the log is already replicated by
JetStream, and shipping it again through pysyncobj (pickled, compressed, encrypted, once per
follower) cost more than folding it. The feeder runs on every replica, leader or not, reading
ahead of what is folded (bounded by the cache), and starts over from wherever the fold thread
says it is waiting (after a snapshot moved the state forward, a lost connection, a reset stream).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats.errors
import structlog

from schemas import names
from services.hive.logcache import LogCache
from swarm.kernel.eventlog import EventLog, Reader

log = structlog.get_logger(__name__)


class Feeder:
    def __init__(
        self,
        eventlog: EventLog,
        cache: LogCache,
        folded: Callable[[], int],
        *,
        batch: int = 1000,
    ) -> None:
        self.log = eventlog
        self.cache = cache
        self.folded = folded
        self.batch = batch
        #: The next sequence this feeder will read.
        self.next = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._read(stop)
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                log.warning("reading the log for the fold failed; reading again", error=str(exc))
                await asyncio.sleep(0.2)

    async def _read(self, stop: asyncio.Event) -> None:
        self.next = self.folded() + 1
        reader: Reader = await self.log.reader(
            names.STREAM_EVENTS, start_seq=self.next, batch=self.batch
        )
        try:
            while not stop.is_set():
                wanted = self.cache.wanted
                if wanted is not None and wanted < self.next:
                    return  # the fold waits for something behind us: read again from there
                if self.cache.full:
                    await asyncio.to_thread(self.cache.wait_for_room, 0.2)
                    continue
                deliveries = await reader.fetch(self.batch, timeout=0.2)
                if deliveries:
                    self.cache.put([(d.stream_seq, d.data) for d in deliveries])
                    self.next = deliveries[-1].stream_seq + 1
        finally:
            await reader.close()


__all__ = ["Feeder"]
