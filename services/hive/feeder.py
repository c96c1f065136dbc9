"""Every Hive replica reads SWARM_EVENTS itself, into its `LogCache`.

Raft carries positions and digests, not the events (`raft.py`): the log is already replicated by
JetStream, and shipping it again through pysyncobj (pickled, compressed, encrypted, once per
follower) cost more than folding it. The feeder runs on every replica, leader or not, reading
ahead of what is folded (bounded by the cache), and starts over from wherever the fold thread
says it is waiting (after a snapshot moved the state forward, a lost connection, a reset stream).

A backlog (a replica starting on a long log, or one that fell behind) is read with
`swarm.kernel.logscan.scan`, then new events with a `Reader`, until it finds a backlog again.
`Reader.fetch` waits for every message of a batch separately (nats-py: a task, a `wait_for` and
a uuid per message); with 3 replicas folding bench/hive.py's log that was about a quarter of
each replica's CPU, more than evolving the events. `scan` receives whole batches on its own
inbox, with the next one already asked for, but reads only up to where the log ended when it
started, which is why it is used for the backlog alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from schemas import names
from services.hive.logcache import LogCache
from swarm.kernel.eventlog import Delivery, EventLog, EventLogError, Reader
from swarm.kernel.logscan import scan

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
            except (EventLogError, TimeoutError, OSError) as exc:
                log.warning("reading the log for the fold failed; reading again", error=str(exc))
                await asyncio.sleep(0.2)

    async def _read(self, stop: asyncio.Event) -> None:
        """Read the backlog, then follow the log until it finds a backlog again (or the fold
        asks for something behind what was read); the caller starts it over."""
        self.next = self.folded() + 1
        backlog = scan(self.log, names.STREAM_EVENTS, start_seq=self.next, batch=self.batch)
        async with contextlib.aclosing(backlog):
            async for deliveries in backlog:
                if not await self._room(stop):
                    return
                self._put(deliveries)
        reader: Reader = await self.log.reader(
            names.STREAM_EVENTS, start_seq=self.next, batch=self.batch
        )
        try:
            while await self._room(stop):
                deliveries = await reader.fetch(self.batch, timeout=0.2)
                if deliveries:
                    self._put(deliveries)
                    if deliveries[-1].num_pending >= self.batch:
                        return  # fallen behind: scan what is pending
        finally:
            await reader.close()

    async def _room(self, stop: asyncio.Event) -> bool:
        """Wait until the cache has room; False when reading should stop or start over."""
        while not stop.is_set():
            wanted = self.cache.wanted
            if wanted is not None and wanted < self.next:
                return False  # the fold waits for something behind us: read again from there
            if not self.cache.full:
                return True
            await asyncio.to_thread(self.cache.wait_for_room, 0.2)
        return False

    def _put(self, deliveries: list[Delivery]) -> None:
        self.cache.put([(d.stream_seq, d.data) for d in deliveries])
        self.next = deliveries[-1].stream_seq + 1


__all__ = ["Feeder"]
