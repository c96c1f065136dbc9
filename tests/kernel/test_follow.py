"""`swarm.kernel.follow`: a projection follows SWARM_EVENTS on a real nats-server — it folds the
events it wants in order, only advances past the rest (unreadable ones included), says when it
has caught up, and a restarted loop picks up where the projection stands."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from schemas import Envelope, event, events, new_id
from schemas.specs import Capacity
from swarm.kernel.eventlog import AppendRequest, EventLog
from swarm.kernel.follow import follow, wanted_events
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(30)


@dataclass
class Pods:
    """Registered pods by id, as the simplest projection."""

    applied_seq: int = 0
    pods: list[str] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    def fold(self, envelope: Envelope[Any], seq: int) -> None:
        self.pods.append(envelope.data.pod_id)
        self.applied_seq = seq

    def advance(self, seq: int) -> None:
        self.skipped.append(seq)
        self.applied_seq = seq


def registered(pod_id: str) -> AppendRequest:
    payload = events.PodRegistered(
        pod_id=pod_id,
        capacity=Capacity(memory_mb=64, fuel_per_s=1000, slots=4),
        zone="z",
        energy_cost=1.0,
        lease_s=5,
    )
    return AppendRequest.of(event(payload, aggregate_id=pod_id, source="test"))


@contextlib.asynccontextmanager
async def following(log: EventLog, view: Pods) -> AsyncIterator[asyncio.Event]:
    stop, live = asyncio.Event(), asyncio.Event()
    wanted = wanted_events([events.PodRegistered])
    task = asyncio.create_task(
        follow(log, view, wanted, stop=stop, live=live, batch=2, idle_s=0.05)
    )
    try:
        await asyncio.wait_for(live.wait(), 10)
        yield live
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def until(check: Any) -> None:
    async def holds() -> bool:
        return bool(check())

    await wait_until(holds, 45, "the projection to fold the new event")


async def test_folds_wanted_events_in_order_and_skips_the_rest(own_log: EventLog) -> None:
    lost = events.PodLost(pod_id="p1", reason="gone")
    await own_log.append_batch(
        [
            registered("p1"),
            AppendRequest.of(event(lost, aggregate_id="p1", source="test")),  # not wanted
            AppendRequest("swarm.evt.pod.p9.registered", b"not json", new_id()),  # unreadable
            registered("p2"),
            registered("p3"),
        ]
    )
    view = Pods()
    async with following(own_log, view):
        # Live only once everything on the log when it began was read.
        assert view.pods == ["p1", "p2", "p3"]
        assert view.skipped == [2, 3]
        assert view.applied_seq == 5
        # New events keep coming in.
        await own_log.append_batch([registered("p4")])
        await until(lambda: view.pods[-1:] == ["p4"])
    # A restarted loop starts after what the projection has seen: nothing folds twice.
    await own_log.append_batch([registered("p5")])
    async with following(own_log, view):
        await until(lambda: view.pods[-1:] == ["p5"])
    assert view.pods == ["p1", "p2", "p3", "p4", "p5"]
