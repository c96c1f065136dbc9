"""Following SWARM_EVENTS into an in-memory projection: read in order from where it stands, fold
what it wants, and say when it has caught up with the log.

Pods and the autoscaler keep such projections (the Hive replicates its own through Raft, and the
scheduler and the Observer keep theirs in stream-app tables). Each reads from its
`applied_seq + 1` with an ordered reader, so a restart of the loop picks up exactly where it
stopped; a missing delivery raises `GapError` and the caller reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import structlog

from schemas import REGISTRY, DecodeError, Envelope, Payload, names
from swarm.kernel.eventlog import Delivery, EventLog, EventLogError

log = structlog.get_logger(__name__)


class Projection(Protocol):
    """State folded from SWARM_EVENTS; `applied_seq` is the last sequence it has seen."""

    applied_seq: int

    def fold(self, envelope: Envelope[Any], seq: int) -> None: ...

    def advance(self, seq: int) -> None: ...


class GapError(EventLogError):
    """A delivery of an ordered feed went missing; read again from `applied_seq + 1`."""


def wanted_events(models: Iterable[type[Payload]]) -> frozenset[tuple[str, str]]:
    """(aggregate, event) of every event type in `models`, to skip the rest before decoding."""
    pairs: set[tuple[str, str]] = set()
    for model in models:
        entry = REGISTRY.get(model.TYPE)
        if entry is not None and entry.aggregate and entry.event:
            pairs.add((entry.aggregate, entry.event))
    return frozenset(pairs)


def apply(projection: Projection, wanted: frozenset[tuple[str, str]], d: Delivery) -> None:
    """Fold one delivery if it is an event the projection wants and can read; else only advance
    (an unreadable event is logged: the log is the record, a projection must not stop on it)."""
    parts = names.parse_event_subject(d.subject)
    if parts is None or (parts[0], parts[2]) not in wanted:
        projection.advance(d.stream_seq)
        return
    try:
        envelope = d.decode()
    except DecodeError as exc:
        log.warning("unreadable event skipped", seq=d.stream_seq, error=str(exc))
        projection.advance(d.stream_seq)
        return
    projection.fold(envelope, d.stream_seq)


async def follow(
    eventlog: EventLog,
    projection: Projection,
    wanted: frozenset[tuple[str, str]],
    *,
    stop: asyncio.Event,
    live: asyncio.Event,
    batch: int,
    idle_s: float,
    after_batch: Callable[[], Awaitable[None]] | None = None,
    what: str = "view",
) -> None:
    """Fold SWARM_EVENTS from `projection.applied_seq + 1` until `stop` is set; set `live` once
    what was on the log when reading began has been folded. `after_batch` runs after every
    fetch (also an empty one), e.g. to act on the projection."""
    reader = await eventlog.reader(
        names.STREAM_EVENTS, start_seq=projection.applied_seq + 1, batch=batch
    )
    expected = 1
    try:
        while not stop.is_set():
            deliveries = await reader.fetch(batch, timeout=idle_s)
            for d in deliveries:
                if d.consumer_seq != expected:
                    raise GapError(f"expected delivery {expected}, got {d.consumer_seq}")
                expected += 1
                apply(projection, wanted, d)
            if not live.is_set():
                if deliveries and deliveries[-1].num_pending > 0:
                    continue
                if not deliveries and not await reader.caught_up():
                    continue
                live.set()
                log.info(f"{what} rebuilt", applied_seq=projection.applied_seq)
            if after_batch is not None:
                await after_batch()
    finally:
        with contextlib.suppress(EventLogError, OSError):
            await reader.close()


__all__ = ["GapError", "Projection", "apply", "follow", "wanted_events"]
