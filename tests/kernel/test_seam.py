"""The log client as the only NATS seam, on a real nats-server: core messages, stored-message
reads, buckets and the module store answer with Swarm's types, and every failure is one of the
log client's typed errors, never a nats-py exception."""

from __future__ import annotations

import asyncio

import pytest

from schemas import names, new_id
from swarm.kernel.admin import LogAdmin
from swarm.kernel.eventlog import (
    AppendRequest,
    EventLog,
    EventLogError,
    Message,
    NoResponders,
    NotFound,
    RequestTimeout,
    Unavailable,
)
from swarm.kernel.settings import Settings

pytestmark = pytest.mark.timeout(30)


async def test_request_reply_and_one_shot_subscriptions(event_log: EventLog) -> None:
    subject = f"test.seam.{new_id()}"

    async def echo(msg: Message) -> None:
        await event_log.respond(msg, b"re: " + msg.data, headers={"X-Seen": "1"})

    sub = await event_log.subscribe(subject, echo)
    try:
        reply = await event_log.request(subject, b"hello", timeout=2)
        assert (reply.data, (reply.headers or {}).get("X-Seen")) == (b"re: hello", "1")
    finally:
        await sub.close()
        await sub.close()  # safe twice

    inbox = event_log.new_inbox()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def keep(msg: Message) -> None:
        got.put_nowait(msg.data)

    await event_log.subscribe(inbox, keep, max_msgs=1)
    await event_log.publish(inbox, b"one")
    await event_log.publish(inbox, b"two")
    await event_log.flush()
    assert await asyncio.wait_for(got.get(), 2) == b"one"
    await asyncio.sleep(0.1)
    assert got.empty()  # the subscription ended after its one message


async def test_request_failures_are_typed(event_log: EventLog) -> None:
    with pytest.raises(NoResponders):
        await event_log.request(f"test.seam.nobody.{new_id()}", b"", timeout=1)

    subject = f"test.seam.silent.{new_id()}"

    async def ignore(msg: Message) -> None:
        return None

    sub = await event_log.subscribe(subject, ignore)
    try:
        with pytest.raises(RequestTimeout) as caught:
            await event_log.request(subject, b"", timeout=0.2)
        assert isinstance(caught.value, TimeoutError)  # callers catching TimeoutError keep working
        assert isinstance(caught.value, Unavailable)
    finally:
        await sub.close()


async def test_stored_messages_by_position_and_missing_ones(event_log: EventLog) -> None:
    admin = LogAdmin(event_log)
    stream = f"TEST_SEAM_{new_id()}".upper().replace("-", "_")
    prefix = f"test.seam.stored.{new_id()}"
    await admin.ensure_limited_stream(stream, [f"{prefix}.>"], "a test stream", max_age=60.0)
    # The same again: an update, no error.
    await admin.ensure_limited_stream(stream, [f"{prefix}.>"], "a test stream", max_age=60.0)
    try:
        msg_id = new_id()
        stored = await event_log.append_raw(
            AppendRequest(f"{prefix}.a", b"work", msg_id, extra_headers={"X-Reply": "_INBOX.x"})
        )
        last = await event_log.last_message(stream, f"{prefix}.*")
        assert (last.seq, last.data, last.stream) == (stored.seq, b"work", stream)
        assert (last.headers[names.HEADER_MSG_ID], last.headers["X-Reply"]) == (msg_id, "_INBOX.x")
        assert (await event_log.message(stream, stored.seq)).subject == f"{prefix}.a"
        with pytest.raises(NotFound):
            await event_log.last_message(stream, f"{prefix}.never")
        with pytest.raises(NotFound):
            await event_log.message(stream, stored.seq + 1)

        state = await admin.stream(stream, subjects=f"{prefix}.>")
        assert (state.messages, state.last_seq, state.subjects) == (
            1,
            stored.seq,
            {f"{prefix}.a": 1},
        )
    finally:
        await event_log.js.delete_stream(stream)
    with pytest.raises(NotFound):
        await admin.stream(stream)
    with pytest.raises(NotFound):
        await event_log.last_sequence(stream)


async def test_buckets_and_the_module_store(event_log: EventLog) -> None:
    admin = LogAdmin(event_log)
    name = f"test-seam-{new_id()}".lower()
    with pytest.raises(NotFound):
        await admin.bucket(name, create=False)
    bucket = await admin.bucket(name, description="a test bucket", history=3)
    try:
        assert await bucket.get("a.1") is None
        first = await bucket.put("a.1", b"x")
        await bucket.put("a.1", b"y")
        await bucket.put("a.2", b"z")
        await bucket.put("b.1", b"w")
        assert await bucket.get("a.1") == b"y"
        entry = await bucket.entry("a.1", revision=first)
        assert entry is not None
        assert (entry.key, entry.value, entry.deleted) == ("a.1", b"x", False)
        assert [e.value for e in await bucket.history("a.1")] == [b"x", b"y"]
        assert sorted(await bucket.values("a.*")) == [b"y", b"z"]
        await bucket.purge_keys("a.>")
        assert await bucket.get("a.1") is None
        assert await bucket.history("a.2") == []
        await bucket.delete("b.1")
        await bucket.delete("b.1")  # a missing key is no error
        assert await bucket.get("b.1") is None
    finally:
        await event_log.js.delete_key_value(name)

    modules = await admin.modules()
    digest = new_id()
    assert await modules.info(digest) is None
    with pytest.raises(NotFound):
        await modules.get(digest)
    await modules.put(digest, b"\0asm-ish")
    assert await modules.get(digest) == b"\0asm-ish"
    info = await modules.info(digest)
    assert info is not None
    assert (info.name, info.size) == (digest, 8)
    assert digest in {o.name for o in await modules.list()}


async def test_a_closed_connection_is_an_event_log_error(nats_url: str) -> None:
    log = await EventLog.connect(nats_url, ensure=False, name="pytest-closed")
    await log.close()
    with pytest.raises(EventLogError):
        await log.publish("test.seam.closed", b"")
    with pytest.raises(EventLogError):
        await log.request("test.seam.closed", b"", timeout=0.5)


async def test_a_flushed_subscription_answers_another_connection_at_once(
    nats_url: str, settings: Settings
) -> None:
    """`EventLog.flush` (`swarm.kernel.connection.settle`) returns once the server has the
    subscriptions made before it: a request from another connection right after finds them.
    With nats-py's single `flush()` this missed 0-3 times in 500 on an idle machine and 20-34
    with busy cores (its PING overtakes a SUB still in the client's buffer)."""
    answering = await EventLog.connect(nats_url, settings, name="answering")
    asking = await EventLog.connect(nats_url, settings, name="asking")
    missed = 0
    try:
        for i in range(300):
            subject = f"test.settle.{new_id()}.{i}"

            async def here(msg: Message) -> None:
                await answering.respond(msg, b"here")

            sub = await answering.subscribe(subject, here)
            await answering.flush()
            try:
                assert (await asking.request(subject, timeout=10)).data == b"here"
            except NoResponders:
                missed += 1
            await sub.close()
    finally:
        await answering.close()
        await asking.close()
    assert missed == 0, f"{missed} of 300 requests found no subscription after a flush"
