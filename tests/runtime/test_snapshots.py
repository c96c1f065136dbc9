"""The snapshot store on a real JetStream KV bucket: rewind reads by time and by revision, states
larger than one message saved in chunks and restored byte-identical, all or nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from nats.js.client import KV_PRE_TEMPLATE, KV_STREAM_TEMPLATE

from runtime.config import PodSettings
from runtime.kvstate import KvState
from runtime.snapshots import (
    HISTORY,
    SnapshotRef,
    SnapshotStore,
    SnapshotUnreadable,
    decode,
    decode_body,
    encode_body,
)
from schemas import utcnow
from swarm.kernel.admin import Bucket, LogAdmin
from swarm.kernel.eventlog import EventLog

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def store(
    event_log: EventLog, request: pytest.FixtureRequest
) -> AsyncIterator[SnapshotStore]:
    """A bucket of this test's own, sized by the connection's real max_payload; removed after."""
    bucket = f"test-snap-{request.node.name[:40].replace('_', '-')}"
    store = await SnapshotStore.open(event_log, bucket)
    try:
        yield store
    finally:
        await event_log.js.delete_key_value(bucket)


def random_state(total: int, value_size: int) -> dict[str, bytes]:
    return {f"key-{i}": os.urandom(value_size) for i in range(total // value_size)}


async def head(event_log: EventLog, store: SnapshotStore, key: str) -> dict[str, Any]:
    kv = await event_log.js.key_value(store.bucket)
    entry = await kv.get(key)
    assert entry.value is not None
    doc: dict[str, Any] = json.loads(entry.value)
    return doc


async def chunk_keys(event_log: EventLog, store: SnapshotStore) -> set[str]:
    """The chunk keys (`<key>.<gen>.<id>.<i>`) that hold a message, from the bucket's stream
    (nats-py's `KeyValue.keys()` sometimes answers before its watcher saw any key)."""
    prefix = KV_PRE_TEMPLATE.format(bucket=store.bucket)
    info = await event_log.js.stream_info(
        KV_STREAM_TEMPLATE.format(bucket=store.bucket), subjects_filter=f"{prefix}*.*.*.*"
    )
    return {subject.removeprefix(prefix) for subject in info.state.subjects or {}}


async def test_the_newest_state_saved_before_a_time_and_an_exact_revision(
    store: SnapshotStore,
) -> None:
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


async def test_a_state_of_three_messages_is_chunked_and_restored_byte_identical(
    event_log: EventLog, store: SnapshotStore
) -> None:
    max_payload = event_log.nc.max_payload
    state = random_state(3 * max_payload, 100_000)
    state["empty"] = b""
    state["ünïcode key"] = b"\x00\xff" * 10

    ref = await store.save("r-big", state)

    doc = await head(event_log, store, "r-big")
    assert doc["v"] == 2
    assert doc["chunks"] >= 3
    loaded = await store.load(ref)
    assert loaded is not None
    assert loaded == (state, ref)
    assert await store.load_exact(ref) == state
    found = await store.load_before("r-big", utcnow())
    assert found is not None
    assert found[0] == state
    # Every message of the snapshot fits what the server takes.
    kv = await event_log.js.key_value(store.bucket)
    for key in await chunk_keys(event_log, store):
        entry = await kv.get(key)
        assert entry.value is not None
        assert len(entry.value) <= max_payload


async def test_a_state_at_the_pods_cap_saves(event_log: EventLog, store: SnapshotStore) -> None:
    caps = PodSettings().state_caps()
    state = KvState(caps=caps)
    value = b"v" * (1024 * 1024 - 16)
    index = 0
    while state.size + len(value) + 16 <= caps.max_bytes:
        state.put(f"k{index:014d}", value)  # 15-byte keys
        index += 1
    state.put("last", b"x" * (caps.max_bytes - state.size - 4))
    assert state.size == caps.max_bytes

    ref = await store.save("r-full", state.copy())
    loaded = await store.load(ref)

    assert loaded is not None
    assert loaded[0] == state


async def test_a_small_state_stays_inline_where_older_pods_read_it(
    event_log: EventLog, store: SnapshotStore
) -> None:
    ref = await store.save("r-small", {"count": b"\x01\x00"})
    kv = await event_log.js.key_value(store.bucket)
    entry = await kv.get("r-small")
    assert entry.value is not None
    assert decode(entry.value) == {"count": b"\x01\x00"}  # the v1 reader
    assert await chunk_keys(event_log, store) == set()
    assert await store.load(ref) == ({"count": b"\x01\x00"}, ref)


async def test_a_snapshot_an_older_pod_wrote_still_loads(
    event_log: EventLog, store: SnapshotStore
) -> None:
    kv = await event_log.js.key_value(store.bucket)
    old = {"v": 1, "kv": {"count": base64.b64encode(b"\x07").decode()}}
    revision = await kv.put("r-old", json.dumps(old).encode())

    ref = SnapshotRef(store.bucket, "r-old", revision)
    assert await store.load(ref) == ({"count": b"\x07"}, ref)
    # The next save carries on from it.
    big = random_state(2 * event_log.nc.max_payload, 500_000)
    newer = await store.save("r-old", big)
    assert (await head(event_log, store, "r-old"))["gen"] == 1
    assert await store.load_exact(ref) == {"count": b"\x07"}
    assert await store.load_exact(newer) == big


class FailingKv:
    """The real bucket, except that the `fail_at`-th put from now raises (a connection lost in
    the middle of a save; nothing else here can cut it at a chosen message)."""

    def __init__(self, kv: Bucket) -> None:
        self._kv = kv
        self.fail_at: int | None = None

    async def put(self, key: str, value: bytes) -> int:
        if self.fail_at is not None:
            self.fail_at -= 1
            if self.fail_at == 0:
                self.fail_at = None
                raise ConnectionError(f"connection lost while writing {key}")
        return await self._kv.put(key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)


async def test_an_interrupted_save_leaves_the_previous_state_whole(
    event_log: EventLog, store: SnapshotStore
) -> None:
    max_payload = event_log.nc.max_payload
    failing = FailingKv(await LogAdmin(event_log).bucket(store.bucket, create=False))
    faulty = SnapshotStore(cast(Bucket, failing), max_payload=lambda: event_log.max_payload)
    before = random_state(2 * max_payload, 300_000)
    ref = await faulty.save("r-cut", before)

    # 1.8 MB: two chunks, then the head. Cut at the first chunk, the second, the head.
    for fail_at, written in ((1, r"r-cut\.\d+\.\w+\.0"), (2, r"r-cut\..*\.1"), (3, "r-cut$")):
        failing.fail_at = fail_at
        with pytest.raises(ConnectionError, match=written):
            await faulty.save("r-cut", random_state(2 * max_payload, 300_000))
        assert await faulty.load(ref) == (before, ref)

    after = random_state(2 * max_payload, 300_000)
    newer = await faulty.save("r-cut", after)
    assert await faulty.load(newer) == (after, newer)


async def test_a_missing_chunk_makes_the_snapshot_unreadable_never_half_restored(
    event_log: EventLog, store: SnapshotStore
) -> None:
    ref = await store.save("r-gap", random_state(2 * event_log.nc.max_payload, 200_000))
    kv = await event_log.js.key_value(store.bucket)
    victim = sorted(await chunk_keys(event_log, store))[1]
    await kv.purge(victim)

    with pytest.raises(SnapshotUnreadable, match="missing"):
        await store.load(ref)


async def test_chunks_are_purged_once_their_head_leaves_the_history(
    event_log: EventLog, store: SnapshotStore
) -> None:
    size = 2 * event_log.nc.max_payload
    refs = [await store.save("r-gc", random_state(size, 250_000)) for _ in range(HISTORY + 3)]

    gens = {int(key.split(".")[1]) for key in await chunk_keys(event_log, store)}
    newest = HISTORY + 3
    assert gens == set(range(newest - HISTORY + 1, newest + 1))  # the kept heads' only
    assert await store.load_exact(refs[-HISTORY]) is not None
    assert await store.load_exact(refs[0]) is None


async def test_messages_are_sized_by_the_connections_max_payload(
    event_log: EventLog, store: SnapshotStore
) -> None:
    small = SnapshotStore(
        await LogAdmin(event_log).bucket(store.bucket, create=False),
        max_payload=lambda: 64 * 1024,
    )
    state = random_state(200 * 1024, 10_000)
    ref = await small.save("r-sized", state)

    assert (await head(event_log, store, "r-sized"))["chunks"] >= 4
    kv = await event_log.js.key_value(store.bucket)
    for key in await chunk_keys(event_log, store):
        entry = await kv.get(key)
        assert entry.value is not None
        assert len(entry.value) <= 64 * 1024
    assert await small.load_exact(ref) == state


def test_a_body_round_trips_and_anything_else_is_unreadable() -> None:
    state = {"a": b"", "ключ": b"\x00" * 3, "z": os.urandom(100)}
    body = encode_body(state)
    assert decode_body(body) == state
    assert decode_body(encode_body({})) == {}
    for bad in (body[:-1], body[:7], b"SWKV\x02" + body[5:], body + b"\x01", b""):
        with pytest.raises(SnapshotUnreadable):
            decode_body(bad)
    with pytest.raises(SnapshotUnreadable, match="UTF-8"):
        decode_body(b"SWKV\x01\x01\x00\x00\x00\xff\x00\x00\x00\x00")
    for head in (b"[]", b"{", b'{"v": 9}', b'{"v": 1, "kv": {"k": "not base64!"}}', b"[" * 10**5):
        with pytest.raises(SnapshotUnreadable):
            decode(head)
