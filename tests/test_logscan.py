"""`swarm.kernel.logscan.scan` on real JetStream: order and completeness across many batches with
two requests in flight, filters, start positions, and ends that never wait out a timeout."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from schemas import names, new_id
from swarm.kernel.eventlog import AppendRequest, EventLog
from swarm.kernel.logscan import scan


async def fill(log: EventLog, n: int) -> None:
    await log.append_batch(
        [
            AppendRequest(f"swarm.evt.thing.t{i % 3}.made", f'{{"n":{i}}}'.encode(), new_id())
            for i in range(n)
        ]
    )


async def seqs(log: EventLog, **kw: object) -> tuple[list[int], list[int]]:
    """(sequences read, size of each batch)."""
    read: list[int] = []
    sizes: list[int] = []
    async for batch in scan(log, names.STREAM_EVENTS, **kw):  # type: ignore[arg-type]
        sizes.append(len(batch))
        read.extend(d.stream_seq for d in batch)
    return read, sizes


async def test_many_small_batches_arrive_in_order_each_once(own_log: EventLog) -> None:
    await fill(own_log, 100)
    read, sizes = await seqs(own_log, batch=7)
    assert read == list(range(1, 101))
    assert max(sizes) <= 2 * 7  # at most two requests in flight


async def test_a_filter_ends_at_the_last_match_without_waiting(own_log: EventLog) -> None:
    await fill(own_log, 60)
    start = time.monotonic()
    read, _ = await seqs(own_log, subjects=["swarm.evt.thing.t1.*"], batch=5)
    assert read == list(range(2, 61, 3))
    nothing, _ = await seqs(own_log, subjects=["swarm.evt.other.>"])
    assert nothing == []
    assert time.monotonic() - start < 5


async def test_start_and_end_positions(own_log: EventLog) -> None:
    await fill(own_log, 20)
    assert (await seqs(own_log, start_seq=15))[0] == list(range(15, 21))
    assert (await seqs(own_log, start_seq=5, end=9, batch=2))[0] == [5, 6, 7, 8, 9]
    assert (await seqs(own_log, start_seq=30))[0] == []
    later = datetime.now(UTC) + timedelta(hours=1)
    assert (await seqs(own_log, start_time=later))[0] == []
    earlier = datetime.now(UTC) - timedelta(hours=1)
    assert (await seqs(own_log, start_time=earlier))[0] == list(range(1, 21))


async def test_what_is_appended_during_a_scan_is_not_read(own_log: EventLog) -> None:
    await fill(own_log, 10)
    read: list[int] = []
    async for batch in scan(own_log, names.STREAM_EVENTS, batch=3):
        if not read:
            await fill(own_log, 10)
        read.extend(d.stream_seq for d in batch)
    assert read == list(range(1, 11))


async def test_an_empty_stream_and_no_consumer_left_behind(own_log: EventLog) -> None:
    assert (await seqs(own_log))[0] == []
    await fill(own_log, 5)
    async for _ in scan(own_log, names.STREAM_EVENTS, batch=2):
        break  # leaving early must delete the consumer all the same
    assert (await seqs(own_log))[0] == [1, 2, 3, 4, 5]
    info = await own_log.js.stream_info(names.STREAM_EVENTS)
    assert info.state.consumer_count == 0
