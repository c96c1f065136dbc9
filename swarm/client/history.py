"""Reading an aggregate's recent history from the event log."""

from __future__ import annotations

from collections import deque

from schemas import names
from swarm.client.commands import closing
from swarm.kernel.eventlog import Delivery, EventLog

__all__ = ["recent_events"]

#: First log window searched for recent events; widened until enough are found.
_EVENTS_WINDOW = 1024


async def recent_events(
    log: EventLog, aggregate: str, aggregate_id: str, last_seq: int, limit: int
) -> list[Delivery]:
    """The aggregate's last `limit` events, oldest first.

    The search starts a window before the aggregate's last known event (`last_seq`, as its
    query answer says) and widens it until enough are found, so a long-lived agent's history is
    not read whole.
    """
    subjects = [names.aggregate_subjects(aggregate, aggregate_id)]
    window = _EVENTS_WINDOW
    while True:
        first = max(1, last_seq - window + 1)
        found: deque[Delivery] = deque(maxlen=limit)
        replay = log.replay(
            names.STREAM_EVENTS, start_seq=first, subjects=subjects, idle_timeout=0.25
        )
        async with closing(replay) as deliveries:
            async for delivery in deliveries:
                found.append(delivery)
        if len(found) >= limit or first == 1:
            return list(found)
        window *= 16
