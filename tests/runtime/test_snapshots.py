"""The snapshot store's rewind reads on a real JetStream KV bucket: by time and by revision."""

from __future__ import annotations

import asyncio

import pytest

from runtime.snapshots import HISTORY, SnapshotStore
from schemas import utcnow
from swarm.kernel.eventlog import EventLog

pytestmark = pytest.mark.timeout(30)


async def test_the_newest_state_saved_before_a_time_and_an_exact_revision(
    event_log: EventLog,
) -> None:
    store = await SnapshotStore.open(event_log.js, "test-snapshots-rewind")
    early = utcnow()
    await asyncio.sleep(0.02)
    first = await store.save("r-1", {"n": b"1"})
    second = await store.save("r-1", {"n": b"2"})
    await asyncio.sleep(0.02)
    between = utcnow()
    await asyncio.sleep(0.02)
    await store.save("r-1", {"n": b"3"})

    found = await store.load_before("r-1", between)
    assert found is not None
    assert found == ({"n": b"2"}, second)
    assert await store.load_before("r-1", early) is None  # nothing saved that early
    assert await store.load_before("never-saved", between) is None
    assert await store.load_exact(first) == {"n": b"1"}

    # The bucket keeps HISTORY revisions per key: an older one is gone, and says so.
    for n in range(HISTORY):
        await store.save("r-1", {"n": str(10 + n).encode()})
    assert await store.load_exact(first) is None
    assert await store.load_before("r-1", between) is None
