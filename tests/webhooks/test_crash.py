"""A dispatcher killed with SIGKILL loses nothing, and recognises what it had already delivered."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas import names
from schemas.webhooks import DeliveryAttempt
from services.webhooks.delivery import Hook, StoredEvent
from services.webhooks.worker import open_consumer
from tests.helpers.processes import service_process
from tests.helpers.webhook_bed import FAST, Bed, bed, wait_until
from tests.helpers.webhook_receiver import Receiver, serve

EVENTS = 200


@contextmanager
def dispatcher_process(tb: Bed, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        "SWARM_NATS_URL": tb.url,
        "SWARM_LOG_LEVEL": "warning",
        **{f"SWARM_WEBHOOKS_{k.upper()}": str(v).lower() for k, v in FAST.items()},
        # A narrow window and a slow receiver (below) keep the stream going for about a second,
        # so the kill lands mid-stream even on a fast machine.
        "SWARM_WEBHOOKS_WINDOW": "4",
    }
    with service_process("services.webhooks", env, log_path, grace=10) as proc:
        yield proc


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_kill_9_mid_stream_then_restart_delivers_every_event(tmp_path: Path) -> None:
    async with bed(tmp_path) as tb:
        # Latency per request keeps deliveries in flight when the kill lands.
        with serve(Receiver(tb.secret, delay_s=0.02)) as receiver:
            hook = await tb.add_hook(receiver.url("/crash"), "swarm.evt.agent.>")
            ids = await tb.agent_events(EVENTS)
            log_path = tmp_path / "dispatcher.log"
            with dispatcher_process(tb, log_path) as first:

                async def some() -> bool:
                    return len(receiver.on("/crash")) >= EVENTS // 3

                await wait_until(some, timeout=30, what="a third of the deliveries")
                first.send_signal(signal.SIGKILL)
                first.wait(10)
            at_kill = Counter(r.headers["webhook-id"] for r in receiver.on("/crash"))
            assert 0 < len(at_kill) < EVENTS, "the kill must land mid-stream"
            with dispatcher_process(tb, log_path):

                async def everything() -> bool:
                    got = {r.headers["webhook-id"] for r in receiver.on("/crash")}
                    return got >= set(ids)

                await wait_until(everything, timeout=60, what="every event delivered")

                async def settled() -> bool:
                    info = await tb.log.js.consumer_info(
                        names.STREAM_EVENTS, names.webhook_consumer(hook)
                    )
                    return info.num_ack_pending == 0 and info.num_pending == 0

                await wait_until(settled, timeout=30, what="every event acknowledged")
        received = Counter(r.headers["webhook-id"] for r in receiver.on("/crash"))
        assert set(received) == set(ids)  # at least once, nothing extra
        for request in receiver.on("/crash"):
            receiver.verify(request)
        attempts = await tb.attempts(hook)
        delivered = {a.event_id for a in attempts if a.outcome == "delivered"}
        assert delivered == set(ids)
        duplicates = [a for a in attempts if a.outcome == "duplicate"]
        # A duplicate record is only ever written for an event the receiver really has.
        assert all(received[a.event_id] >= 1 for a in duplicates)
        # An event sent before the kill but not recorded reached the receiver twice (with the
        # same webhook-id, which is how receivers drop it); its second attempt says it may be a
        # duplicate, so every duplicate the receiver saw is on the record.
        twice = {i for i, n in received.items() if n > 1}
        flagged = {a.event_id for a in attempts if a.maybe_duplicate}
        assert twice <= flagged
        print(
            f"kill -9: {len(twice)} sent twice, all flagged maybe_duplicate ({len(flagged)} "
            f"flagged); {len(duplicates)} recognised as delivered and not sent again"
        )


async def test_an_event_handed_out_again_after_delivery_is_recorded_as_duplicate(
    tmp_path: Path,
) -> None:
    """What a crash between recording a delivery and acknowledging it leaves behind, made on
    purpose: events fetched from the subscription's consumer and recorded as delivered, but
    never acknowledged. JetStream hands them out again after ack_wait; the dispatcher finds
    their records, does not send them again, and records the duplicates."""
    async with bed(tmp_path) as tb:
        with serve(Receiver(tb.secret)) as receiver:
            hook_id = await tb.add_hook(receiver.url("/dup"), "swarm.evt.agent.>")
            ids = await tb.agent_events(4)
            added_seq = await tb.log.last_sequence(
                names.STREAM_EVENTS, names.event_subject("webhook", hook_id, "added")
            )
            hook = Hook(hook_id, receiver.url("/dup"), "swarm.evt.agent.>", None, added_seq)
            crashed = await open_consumer(
                tb.log, hook, window=32, ack_wait=float(FAST["ack_wait_s"])
            )
            fetched = await crashed.fetch(2, timeout=2)
            assert len(fetched) == 2
            for d in fetched:
                event = StoredEvent.parse(d.stream_seq, d.subject, d.data)
                record = DeliveryAttempt(
                    webhook_id=hook_id,
                    event_id=event.event_id,
                    event_seq=event.seq,
                    attempt=1,
                    outcome="delivered",
                    status_code=200,
                    at=datetime.now(UTC),
                )
                await tb.log.js.publish(
                    names.webhook_delivery_subject(hook_id, event.seq),
                    record.model_dump_json().encode(),
                )
            await crashed.close()
            already = {StoredEvent.parse(d.stream_seq, d.subject, d.data).event_id for d in fetched}
            async with tb.dispatcher() as dispatcher:

                async def done() -> bool:
                    return (
                        dispatcher.counts()["duplicates"] == 2
                        and dispatcher.counts()["delivered"] == 2
                    )

                await wait_until(done, timeout=20, what="2 duplicates and 2 deliveries")
                await asyncio.sleep(0.2)
        sent = [r.headers["webhook-id"] for r in receiver.on("/dup")]
        assert sorted(sent) == sorted(set(ids) - already)
        dup_records = [a for a in await tb.attempts(hook_id) if a.outcome == "duplicate"]
        assert sorted(a.event_id for a in dup_records) == sorted(already)
        assert all("not sent" in a.error for a in dup_records)
