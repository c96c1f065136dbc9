"""Contract suite for the event-log client against a real JetStream server.

What every consumer of the log relies on: dedupe by message id, optimistic concurrency,
redelivery after a consumer dies without acking, ordered replay from a sequence or a time, and
malformed payloads that are refused or reported, never a crash.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import REGISTRY, CommandAccepted, DecodeError, event, names, new_id
from swarm.kernel.eventlog import (
    AppendFailed,
    AppendRequest,
    ConcurrencyConflict,
    DuplicateBatch,
    EventLog,
)


def accepted(aggregate_id: str, n: int = 0):  # type: ignore[no-untyped-def]
    return event(
        CommandAccepted(
            command_id=aggregate_id, command_type="swarm.cmd.test.run", events=[str(n)]
        ),
        aggregate_id=aggregate_id,
        source="contract-test",
    )


async def test_append_returns_stream_and_sequence(event_log: EventLog) -> None:
    before = await event_log.last_sequence(names.STREAM_EVENTS)
    result = await event_log.append(accepted(new_id()))
    assert result.stream == names.STREAM_EVENTS
    assert result.seq == before + 1
    assert result.duplicate is False


async def test_same_message_id_is_stored_once(event_log: EventLog) -> None:
    agg = new_id()
    envelope = accepted(agg)
    first = await event_log.append(envelope)
    again = await event_log.append(envelope)
    assert again.duplicate is True
    assert again.seq == first.seq
    batch = await event_log.append_batch([AppendRequest.of(envelope)] * 3)
    assert {a.seq for a in batch} == {first.seq}
    assert all(a.duplicate for a in batch)
    stored = [
        d
        async for d in event_log.replay(names.STREAM_EVENTS, subjects=[names.outcome_wildcard(agg)])
    ]
    assert [d.stream_seq for d in stored] == [first.seq]


async def test_expected_sequence_conflict_is_typed(event_log: EventLog) -> None:
    agg = new_id()
    wildcard = names.outcome_wildcard(agg)
    first = await event_log.append(accepted(agg), expected_last_seq=0, expected_subject=wildcard)
    # A writer that still believes the aggregate is empty loses.
    with pytest.raises(ConcurrencyConflict) as info:
        await event_log.append(accepted(agg), expected_last_seq=0, expected_subject=wildcard)
    assert info.value.expected == 0
    assert info.value.actual == first.seq
    assert info.value.subject == wildcard
    # The writer that saw the latest sequence wins.
    second = await event_log.append(
        accepted(agg), expected_last_seq=first.seq, expected_subject=wildcard
    )
    assert second.seq > first.seq
    assert await event_log.last_sequence(names.STREAM_EVENTS, wildcard) == second.seq


async def test_conflict_inside_a_batch_is_raised(event_log: EventLog) -> None:
    agg = new_id()
    await event_log.append(accepted(agg))
    with pytest.raises(ConcurrencyConflict):
        await event_log.append_batch(
            [
                AppendRequest.of(
                    accepted(agg), expected_last_seq=0, expected_subject=names.outcome_wildcard(agg)
                )
            ]
        )


_DIE_WITHOUT_ACK = """
import asyncio, os, signal, sys
from swarm.kernel.eventlog import EventLog
async def main():
    log = await EventLog.connect(sys.argv[1], ensure=False)
    consumer = await log.consumer(
        sys.argv[2], sys.argv[3], filter_subjects=[sys.argv[4]], ack_wait=1.0
    )
    got = await consumer.fetch(10, timeout=5)
    print(",".join(str(d.stream_seq) for d in got), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # die holding the messages, acking nothing
asyncio.run(main())
"""


async def test_unacked_messages_are_redelivered_after_consumer_dies(
    event_log: EventLog, nats_url: str
) -> None:
    agg = new_id()
    subject = names.outcome_wildcard(agg)
    appended = [await event_log.append(accepted(agg, n)) for n in range(3)]
    durable = f"contract-{agg}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _DIE_WITHOUT_ACK,
        nats_url,
        names.STREAM_EVENTS,
        durable,
        subject,
        stdout=subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == -9
    assert out.decode().strip() == ",".join(str(a.seq) for a in appended)

    consumer = await event_log.consumer(
        names.STREAM_EVENTS, durable, filter_subjects=[subject], ack_wait=1.0
    )
    redelivered = []
    while len(redelivered) < 3:
        batch = await consumer.fetch(10, timeout=3)
        assert batch, "unacked messages were not redelivered"
        redelivered += batch
    assert [d.stream_seq for d in redelivered] == [a.seq for a in appended]
    assert all(d.num_delivered == 2 for d in redelivered)
    for d in redelivered:
        await d.ack_sync()
    assert await consumer.pending() == (0, 0)
    await consumer.close()
    await event_log.delete_consumer(names.STREAM_EVENTS, durable)


async def test_max_ack_pending_bounds_unacked_messages(event_log: EventLog) -> None:
    agg = new_id()
    await event_log.append_batch([AppendRequest.of(accepted(agg, n)) for n in range(20)])
    consumer = await event_log.consumer(
        names.STREAM_EVENTS,
        f"bounded-{agg}",
        filter_subjects=[names.outcome_wildcard(agg)],
        max_ack_pending=5,
    )
    first = await consumer.fetch(20, timeout=1)
    assert len(first) == 5
    assert await consumer.fetch(20, timeout=0.5) == []
    for d in first:
        await d.ack_sync()
    assert len(await consumer.fetch(20, timeout=1)) == 5
    await consumer.close()
    await event_log.delete_consumer(names.STREAM_EVENTS, f"bounded-{agg}")


async def test_replay_from_sequence_is_ordered_and_complete(event_log: EventLog) -> None:
    agg = new_id()
    appended = await event_log.append_batch([AppendRequest.of(accepted(agg, n)) for n in range(50)])
    subject = names.outcome_wildcard(agg)
    everything = [d async for d in event_log.replay(names.STREAM_EVENTS, subjects=[subject])]
    assert [d.stream_seq for d in everything] == [a.seq for a in appended]
    from_middle = [
        d
        async for d in event_log.replay(
            names.STREAM_EVENTS, start_seq=appended[25].seq, subjects=[subject]
        )
    ]
    assert [d.stream_seq for d in from_middle] == [a.seq for a in appended[25:]]
    assert [d.decode().data.events for d in from_middle] == [[str(n)] for n in range(25, 50)]
    # Small batches give the same result: batching is an optimisation, not a semantic.
    small = [d async for d in event_log.replay(names.STREAM_EVENTS, subjects=[subject], batch=7)]
    assert [d.stream_seq for d in small] == [a.seq for a in appended]


async def test_replay_from_time(event_log: EventLog) -> None:
    agg = new_id()
    subject = names.outcome_wildcard(agg)
    early = [await event_log.append(accepted(agg, n)) for n in range(3)]
    await asyncio.sleep(0.05)
    cut = datetime.now(UTC)
    await asyncio.sleep(0.05)
    late = [await event_log.append(accepted(agg, n)) for n in range(3, 6)]
    replayed = [
        d async for d in event_log.replay(names.STREAM_EVENTS, start_time=cut, subjects=[subject])
    ]
    assert [d.stream_seq for d in replayed] == [a.seq for a in late]
    assert all(d.timestamp >= cut for d in replayed)
    assert early[-1].seq < replayed[0].stream_seq


async def test_replay_follow_sees_new_messages(event_log: EventLog) -> None:
    agg = new_id()
    subject = names.outcome_wildcard(agg)
    await event_log.append(accepted(agg, 0))

    async def read_two() -> list[int]:
        seqs = []
        async for d in event_log.replay(
            names.STREAM_EVENTS, subjects=[subject], follow=True, idle_timeout=0.2
        ):
            seqs.append(d.stream_seq)
            if len(seqs) == 2:
                return seqs
        return seqs

    reader = asyncio.create_task(read_two())
    await asyncio.sleep(0.3)
    later = await event_log.append(accepted(agg, 1))
    seqs = await asyncio.wait_for(reader, timeout=10)
    assert seqs[1] == later.seq


async def test_malformed_payload_is_refused_before_append(event_log: EventLog) -> None:
    agg = new_id()
    subject = names.outcome_subject(agg, "accepted")
    before = await event_log.last_sequence(names.STREAM_EVENTS)
    for body in (
        b"not json",
        b"[]",
        b'{"type": "swarm.command.accepted"}',
        json.dumps({**json.loads(accepted(agg).to_json()), "data": {"command_id": 7}}).encode(),
    ):
        with pytest.raises(DecodeError) as info:
            await event_log.append_raw(AppendRequest(subject, body, new_id()), registry=REGISTRY)
        assert info.value.reason
    assert await event_log.last_sequence(names.STREAM_EVENTS) == before


async def test_append_to_subject_without_stream_fails_clearly(event_log: EventLog) -> None:
    with pytest.raises(AppendFailed, match="no stream"):
        await event_log.append_raw(AppendRequest("nowhere.at.all", b"{}", new_id()))


async def test_malformed_message_on_the_log_is_reported_and_skipped(event_log: EventLog) -> None:
    """A foreign client can write garbage; readers get a DecodeError for it and keep going."""
    agg = new_id()
    subject = names.outcome_subject(agg, "accepted")
    await event_log.append_raw(AppendRequest(subject, b"\xff garbage", new_id()))
    good = await event_log.append(accepted(agg))
    durable = f"malformed-{agg}"
    consumer = await event_log.consumer(
        names.STREAM_EVENTS, durable, filter_subjects=[names.outcome_wildcard(agg)]
    )
    batch = await consumer.fetch(10, timeout=2)
    assert len(batch) == 2
    with pytest.raises(DecodeError, match="not JSON"):
        batch[0].decode()
    await batch[0].term()
    assert batch[1].decode().id == batch[1].msg_id
    assert batch[1].stream_seq == good.seq
    await batch[1].ack_sync()
    await consumer.close()
    await event_log.delete_consumer(names.STREAM_EVENTS, durable)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda c: (
                st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=6)
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {
                "type": st.sampled_from([t.type for t in REGISTRY]),
                "data": st.dictionaries(st.text(max_size=8), st.integers()),
            },
            optional={
                "id": st.text(max_size=70),
                "dataschema": st.text(max_size=40),
                "time": st.text(max_size=30),
            },
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_decoding_arbitrary_input_only_ever_raises_decode_error(raw: bytes) -> None:
    try:
        REGISTRY.decode(raw)
    except DecodeError as exc:
        reason = exc.reason
    else:
        reason = "decoded"
    assert reason


async def test_atomic_batch_is_all_or_nothing(event_log: EventLog) -> None:
    agg = new_id()
    wildcard = names.outcome_wildcard(agg)
    requests = [AppendRequest.of(accepted(agg, n)) for n in range(3)]
    first = AppendRequest.of(accepted(agg, 9), expected_last_seq=0, expected_subject=wildcard)
    stored = await event_log.append_atomic([first, *requests])
    assert [a.seq for a in stored] == list(range(stored[0].seq, stored[0].seq + 4))
    # The same batch again: every id is known, nothing new is stored.
    with pytest.raises(DuplicateBatch):
        await event_log.append_atomic([first, *requests])
    # A batch whose expectation fails stores none of its messages, not even the valid ones.
    late = [
        AppendRequest.of(accepted(agg, 10), expected_last_seq=0, expected_subject=wildcard),
        AppendRequest.of(accepted(new_id(), 11)),
    ]
    with pytest.raises(ConcurrencyConflict):
        await event_log.append_atomic(late)
    all_of_it = [d async for d in event_log.replay(names.STREAM_EVENTS, subjects=[wildcard])]
    assert [d.stream_seq for d in all_of_it] == [a.seq for a in stored]
    assert await event_log.last_sequence(names.STREAM_EVENTS, late[1].subject) == 0


async def test_messages_a_timed_out_pull_delivered_late_are_not_lost(event_log: EventLog) -> None:
    """A pull whose messages arrive after its fetch gave up (a busy machine) leaves them in the
    subscription's queue: the server has nothing pending, yet the reader has not returned them.
    A replay that ended on "nothing pending" lost them; `caught_up` must say no until they are
    returned, and the next fetch returns them."""
    agg = new_id()
    subject = names.outcome_wildcard(agg)
    appended = await event_log.append_batch([AppendRequest.of(accepted(agg, n)) for n in range(3)])
    reader = await event_log.reader(names.STREAM_EVENTS, subjects=[subject])
    try:
        # The late delivery, made deterministic: a pull request no fetch is waiting for, on the
        # subscription's own inbox (nats-py's PullSubscription keeps both names private).
        sub = reader._sub
        await event_log.nc.publish(sub._nms, b'{"batch": 3, "no_wait": true}', reply=sub._deliver)
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            info = await sub.consumer_info()
            if info.delivered is not None and info.delivered.consumer_seq == 3:
                break
            assert asyncio.get_running_loop().time() < deadline, info
            await asyncio.sleep(0.02)
        assert info.num_pending == 0
        assert not await reader.caught_up()
        late = await reader.fetch(10, timeout=5)
        assert [d.stream_seq for d in late] == [a.seq for a in appended]
        assert await reader.caught_up()
    finally:
        await reader.close()
