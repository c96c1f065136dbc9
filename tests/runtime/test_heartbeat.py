"""The heartbeat thread against a real nats-server: it beats and answers probes while the event
loop that started it is held busy, falls silent while that loop is wedged, and stops cleanly
(thread joined, connection closed: nobody answers a probe any more)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from runtime.heartbeat import Heartbeat, LoopClock
from schemas import names
from tests.helpers.probes import answering, heartbeat_threads, nobody_listens, probe
from tests.helpers.waiting import true, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url)
    try:
        yield client
    finally:
        await client.close()


async def test_it_beats_and_answers_while_the_loop_is_held_then_stops_cleanly(
    nats_url: str, nc: NATS
) -> None:
    clock = LoopClock(0.05)
    ticking = asyncio.create_task(clock.run())
    beat = Heartbeat(nats_url, "hb-1", interval_s=0.1, lag=clock.lag, stall_s=60)
    beats: list[float] = []

    async def on_beat(msg: Msg) -> None:
        beats.append(time.monotonic())

    await nc.subscribe(names.heartbeat_subject("hb-1"), cb=on_beat)
    try:
        beat.start()
        beat.start()  # a second start does nothing
        assert len(heartbeat_threads("hb-1")) == 1

        async def answered() -> bool:
            answer = await probe(nc, "hb-1")
            return answer is not None and answer["pod_id"] == "hb-1"

        await wait_until(answered, 30, "a probe answered")
        # Hold this event loop (GIL-heavy, as CPU-bound host code would): the thread goes on.
        before = beat.beats
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            pass
        assert beat.beats >= before + 3
        assert clock.worst() >= 1.0
    finally:
        await beat.close()
        await beat.close()  # twice is fine
        ticking.cancel()
    assert not beat.alive
    assert heartbeat_threads("hb-1") == []
    assert len(beats) >= 3
    # Its connection is closed: nobody is subscribed to the probe any more (the server may
    # take a moment to notice the closed socket).
    await wait_until(lambda: nobody_listens(nc, "hb-1"), 30, "the connection closed")


async def test_a_wedged_loop_silences_it_until_the_loop_runs_again(nats_url: str, nc: NATS) -> None:
    lag = [0.0]
    beat = Heartbeat(nats_url, "hb-2", interval_s=0.05, lag=lambda: lag[0], stall_s=5)
    beat.start()
    try:
        await wait_until(lambda: answering(nc, "hb-2"), 30, "a probe answered")
        lag[0] = 6.0  # longer than stall_s: wedged, not busy
        await wait_until(lambda: _silent(nc, "hb-2"), 30, "a silent heartbeat thread")
        beats = beat.beats
        assert await probe(nc, "hb-2") is None
        assert beat.beats == beats
        lag[0] = 0.0
        await wait_until(lambda: answering(nc, "hb-2"), 30, "answers again")
        await wait_until(lambda: true(beat.beats > beats), 30, "beats again")
    finally:
        await beat.close()
    assert not beat.alive


async def test_closing_before_start_or_while_nats_is_unreachable_leaves_no_thread() -> None:
    never = Heartbeat("nats://127.0.0.1:1", "hb-3", interval_s=0.1, lag=lambda: 0.0, stall_s=5)
    await never.close()
    never.start()  # after close: nothing starts
    assert not never.alive
    assert heartbeat_threads("hb-3") == []

    unreachable = Heartbeat(
        "nats://127.0.0.1:1", "hb-4", interval_s=0.1, lag=lambda: 0.0, stall_s=5
    )
    unreachable.start()
    assert unreachable.alive
    await unreachable.close()
    assert not unreachable.alive
    assert heartbeat_threads("hb-4") == []


async def _silent(nc: NATS, pod_id: str) -> bool:
    return await probe(nc, pod_id) is None
