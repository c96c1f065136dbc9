"""One subscription's delivery loop over its durable JetStream consumer.

The consumer's position is the subscription's position: an event is acknowledged only after it
was delivered or dead-lettered (and recorded), so a dispatcher that dies loses nothing; JetStream
hands the unacknowledged events out again after `ack_wait`. Up to `window` events are in flight
at once (the consumer's `max_ack_pending`), so deliveries of one subscription are concurrent and
not ordered; receivers order by the CloudEvent's `time` or the log sequence if they need to.

An event handed out a second time (`num_delivered > 1`) is checked against its attempt records
first: when one says it was delivered, it is not sent again and a `duplicate` record says so;
otherwise it is sent, and its first attempt is marked `maybe_duplicate` (an interrupted run may
have sent it without living to record it).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog

from schemas import names
from schemas.webhooks import DeliveryAttempt
from services.webhooks.delivery import Deliverer, Hook, StoredEvent
from swarm.kernel.eventlog import Consumer, Delivery, EventLog
from swarm.kernel.tasks import cancel_and_wait, failure

log = structlog.get_logger(__name__)

#: How long one fetch waits for new events when the subscription is quiet.
_IDLE_FETCH_S = 1.0


async def open_consumer(log_: EventLog, hook: Hook, *, window: int, ack_wait: float) -> Consumer:
    """The subscription's durable consumer of SWARM_EVENTS, created if it is missing."""
    return await log_.consumer(
        names.STREAM_EVENTS,
        names.webhook_consumer(hook.webhook_id),
        description=f"webhook {hook.webhook_id} -> {hook.url}",
        # From the event after the subscription was added: a new subscription does not get the
        # whole history, and a restarted dispatcher creates the identical consumer (a no-op).
        start_seq=hook.added_seq + 1,
        filter_subjects=[hook.filter],
        max_ack_pending=window,
        ack_wait=ack_wait,
        max_deliver=-1,
        pending_msgs_limit=max(window * 2, 64),
    )


class SubscriptionWorker:
    def __init__(self, hook: Hook, log_: EventLog, deliverer: Deliverer) -> None:
        self.hook = hook
        self.log = log_
        self.deliverer = deliverer
        self.window = deliverer.config.window
        #: Counters of this run, for status and benchmarks.
        self.delivered = 0
        self.dead_lettered = 0
        self.duplicates = 0
        self._inflight: set[asyncio.Task[None]] = set()

    async def open(self) -> Consumer:
        return await open_consumer(
            self.log, self.hook, window=self.window, ack_wait=self.deliverer.config.ack_wait_s
        )

    async def run(self) -> None:
        consumer = await self.open()
        try:
            while True:
                free = self.window - len(self._inflight)
                if free <= 0:
                    await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    batch = await consumer.fetch(free, timeout=_IDLE_FETCH_S)
                except TimeoutError:  # RequestTimeout included
                    continue
                for delivery in batch:
                    task = asyncio.create_task(self._handle(delivery))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
        finally:
            inflight = list(self._inflight)
            await cancel_and_wait(inflight)
            for task in inflight:
                if (error := failure(task)) is not None:
                    log.warning("webhook delivery task failed", error=repr(error))
            await consumer.close()

    async def delete(self) -> None:
        """Forget the subscription's position (it was removed)."""
        await self.log.delete_consumer(
            names.STREAM_EVENTS, names.webhook_consumer(self.hook.webhook_id)
        )

    async def _handle(self, delivery: Delivery) -> None:
        event = StoredEvent.parse(delivery.stream_seq, delivery.subject, delivery.data)
        try:
            first = 1
            again = delivery.num_delivered > 1
            if again:
                earlier = await self.deliverer.books.last_attempt(self.hook.webhook_id, event.seq)
                if earlier is not None:
                    if earlier.outcome in ("delivered", "duplicate") or earlier.dead_lettered:
                        await self._duplicate(earlier)
                        await delivery.ack()
                        return
                    first = earlier.attempt + 1
            final = await self.deliverer.deliver(
                self.hook,
                event,
                first_attempt=first,
                keepalive=delivery.in_progress,
                maybe_duplicate=again,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # NATS trouble while recording: leave the event unacknowledged so it comes back.
            log.warning(
                "delivery interrupted; the event will be handed out again",
                webhook=self.hook.webhook_id,
                seq=event.seq,
                error=str(exc) or type(exc).__name__,
            )
            return
        if final.dead_lettered:
            self.dead_lettered += 1
        else:
            self.delivered += 1
        await delivery.ack()

    async def _duplicate(self, earlier: DeliveryAttempt) -> None:
        """Record that an event already delivered (or dead-lettered) came back, unsent."""
        self.duplicates += 1
        if earlier.outcome == "duplicate":
            return  # already recorded as such by an earlier run
        await self.deliverer.books.record(
            earlier.model_copy(
                update={
                    "outcome": "duplicate",
                    "error": (
                        f"handed out again after attempt {earlier.attempt} was "
                        f"{'dead-lettered' if earlier.dead_lettered else 'delivered'}; not sent"
                    ),
                    "latency_ms": 0.0,
                    "at": datetime.now(UTC),
                    "dead_lettered": False,
                    "maybe_duplicate": False,
                }
            )
        )
