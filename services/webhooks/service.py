"""The webhook dispatcher: follow the subscriptions on the log, deliver, redeliver on request.

Subscriptions are read from their own events (`swarm.evt.webhook.>`), replayed from the start on
every start (they are few) and then followed. Each live subscription gets a worker with its own
durable consumer; a removed one has its worker stopped and its consumer deleted.

A redelivery request (`webhook.redeliver`, decided by the Hive) is carried out once per dead
letter: the request's id is written into each dead letter it tried, so replaying the request after
a restart skips those, while a request the dispatcher had not got to yet is still carried out.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import structlog

from schemas import DecodeError, names
from schemas.webhooks import WebhookAdded, WebhookRedeliveryRequested, WebhookRemoved
from services.webhooks.books import Books
from services.webhooks.config import WebhookSettings
from services.webhooks.delivery import Deliverer, Hook, Secrets, StoredEvent
from services.webhooks.sender import Sender
from services.webhooks.targets import TargetGuard
from services.webhooks.worker import SubscriptionWorker
from swarm.kernel.eventlog import Delivery, EventLog, EventLogError
from swarm.kernel.lifecycle import Service, run_until_signalled
from swarm.kernel.logs import configure_logging
from swarm.kernel.settings import Settings, load
from swarm.kernel.tasks import cancel_and_wait, failure
from swarm.kernel.webhook_storage import (
    dead_letters_bucket,
    ensure_deliveries_stream,
    secrets_bucket,
)

log = structlog.get_logger(__name__)

SOURCE = "webhooks"
#: The subscriptions' own events.
CONTROL_SUBJECTS = (f"{names.EVENTS_PREFIX}.{names.WEBHOOK_AGGREGATE}.>",)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Stop `tasks` for sure (swarm.kernel.tasks says why a plain cancel is not enough)."""
    await cancel_and_wait(tasks)
    for task in tasks:
        if (error := failure(task)) is not None:
            log.warning("webhook task ended with an error", error=repr(error))


class Dispatcher(Service):
    name = "webhooks"

    def __init__(
        self,
        settings: Settings,
        config: WebhookSettings | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(settings)
        self.config = config or WebhookSettings()
        self.rng = rng or random.Random()
        self.hooks: dict[str, Hook] = {}
        self.workers: dict[str, tuple[SubscriptionWorker, asyncio.Task[None]]] = {}
        #: Set once the subscriptions on the log have been read and their workers started.
        self.live = asyncio.Event()
        self._redeliveries: asyncio.Queue[tuple[str, WebhookRedeliveryRequested]] = asyncio.Queue()
        self._deliverer: Deliverer | None = None
        self._log: EventLog | None = None

    def counts(self) -> dict[str, int]:
        workers = [w for w, _ in self.workers.values()]
        return {
            "subscriptions": len(workers),
            "delivered": sum(w.delivered for w in workers),
            "dead_lettered": sum(w.dead_lettered for w in workers),
            "duplicates": sum(w.duplicates for w in workers),
        }

    async def serve(self) -> None:
        """Deliver until stopped; unacknowledged events come back to the next run."""
        eventlog = self._log = await EventLog.connect(self.nats_url, self.settings, name=SOURCE)
        sender = Sender(
            TargetGuard(allow_private=self.config.allow_private, cache_s=self.config.dns_cache_s),
            timeout=self.config.timeout_s,
        )
        try:
            await ensure_deliveries_stream(eventlog, self.config.records_max_age_s)
            books = Books(eventlog, await dead_letters_bucket(eventlog))
            secrets = Secrets(await secrets_bucket(eventlog))
            self._deliverer = Deliverer(sender, books, secrets, self.config, self.rng)
            log.info("webhook dispatcher started", allow_private=self.config.allow_private)
            tasks = [
                asyncio.create_task(self._follow_forever(eventlog)),
                asyncio.create_task(self._redeliver_forever()),
            ]
            await self._stop.wait()
            await _cancel(tasks)
        finally:
            for worker_id in list(self.workers):
                await self._stop_worker(worker_id, delete=False)
            await sender.close()
            await eventlog.close()
            log.info("webhook dispatcher stopped")

    # -- subscriptions ----------------------------------------------------------------------------

    async def _follow_forever(self, eventlog: EventLog) -> None:
        applied = 0
        while True:
            try:
                applied = await self._follow(eventlog, applied)
            except asyncio.CancelledError:
                raise
            except (EventLogError, TimeoutError, OSError) as exc:
                log.warning("subscription feed interrupted; reading again", error=repr(exc))
                await asyncio.sleep(0.5)

    async def _follow(self, eventlog: EventLog, applied: int) -> int:
        reader = await eventlog.reader(
            names.STREAM_EVENTS, start_seq=applied + 1, subjects=CONTROL_SUBJECTS
        )
        try:
            while True:
                batch = await reader.fetch(100, timeout=0.5)
                for delivery in batch:
                    await self._apply(delivery)
                    applied = delivery.stream_seq
                if not batch and not self.live.is_set() and await reader.caught_up():
                    for hook in self.hooks.values():
                        self._start_worker(hook)
                    self.live.set()
        finally:
            await reader.close()

    async def _apply(self, delivery: Delivery) -> None:
        try:
            envelope = delivery.decode()
        except DecodeError as exc:
            log.warning(
                "unreadable subscription event skipped", seq=delivery.stream_seq, error=str(exc)
            )
            return
        data: Any = envelope.data
        if isinstance(data, WebhookAdded):
            hook = Hook(
                data.webhook_id, data.url, data.filter, data.max_attempts, delivery.stream_seq
            )
            self.hooks[hook.webhook_id] = hook
            if self.live.is_set():
                self._start_worker(hook)
        elif isinstance(data, WebhookRemoved):
            self.hooks.pop(data.webhook_id, None)
            await self._stop_worker(data.webhook_id, delete=True)
            if self._deliverer is not None:
                self._deliverer.secrets.forget(data.webhook_id)
        elif isinstance(data, WebhookRedeliveryRequested):
            self._redeliveries.put_nowait((envelope.id, data))

    def _start_worker(self, hook: Hook) -> None:
        if hook.webhook_id in self.workers or self._log is None or self._deliverer is None:
            return
        worker = SubscriptionWorker(hook, self._log, self._deliverer)
        task = asyncio.create_task(self._run_worker(worker))
        self.workers[hook.webhook_id] = (worker, task)

    async def _run_worker(self, worker: SubscriptionWorker) -> None:
        while True:
            try:
                await worker.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "subscription worker failed; starting it again",
                    webhook=worker.hook.webhook_id,
                    error=repr(exc),
                )
                await asyncio.sleep(0.5)

    async def _stop_worker(self, webhook_id: str, *, delete: bool) -> None:
        entry = self.workers.pop(webhook_id, None)
        if entry is None:
            if delete and self._log is not None and self._deliverer is not None:
                hook = Hook(webhook_id, "", "", None, 0)
                await SubscriptionWorker(hook, self._log, self._deliverer).delete()
            return
        worker, task = entry
        await _cancel([task])
        if delete:
            await worker.delete()

    # -- redelivery -------------------------------------------------------------------------------

    async def _redeliver_forever(self) -> None:
        await self.live.wait()
        while True:
            request_id, request = await self._redeliveries.get()
            try:
                await self._redeliver(request_id, request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("redelivery failed; trying again", request=request_id, error=repr(exc))
                await asyncio.sleep(1.0)
                self._redeliveries.put_nowait((request_id, request))

    async def _redeliver(self, request_id: str, request: WebhookRedeliveryRequested) -> None:
        deliverer, eventlog = self._deliverer, self._log
        hook = self.hooks.get(request.webhook_id)
        if hook is None or deliverer is None or eventlog is None:
            return  # removed meanwhile: nothing to send to
        wanted = set(request.event_ids)
        for letter in await deliverer.books.dead_letters(hook.webhook_id):
            if request_id in letter.handled or (wanted and letter.event_id not in wanted):
                continue
            stored = await eventlog.message(names.STREAM_EVENTS, letter.event_seq)
            event = StoredEvent.parse(letter.event_seq, stored.subject, stored.data)
            final = await deliverer.deliver(
                hook,
                event,
                first_attempt=letter.attempts + 1,
                redelivery=request_id,
                handled=tuple(letter.handled),
            )
            if not final.dead_lettered:
                await deliverer.books.remove_dead_letter(letter)


async def main() -> None:
    settings = load(Settings, "setting")
    configure_logging(settings.log_level, settings.log_format)
    await run_until_signalled(Dispatcher(settings, load(WebhookSettings, "webhook setting")))
