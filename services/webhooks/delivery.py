"""Delivering one event to one subscription: attempts, backoff, records, dead letter."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.webhooks import DeadLetter, DeliveryAttempt
from services.webhooks.backoff import retry_delay
from services.webhooks.books import Books
from services.webhooks.config import WebhookSettings
from services.webhooks.sender import Answer, Sender
from swarm.kernel.admin import Bucket

#: What a dead letter says as its last attempt's record did: the webhook and the event, the last
#: status code and error, and when.
_AS_LAST_ATTEMPT = {
    "webhook_id",
    "event_id",
    "event_seq",
    "event_type",
    "subject",
    "status_code",
    "error",
    "at",
}


@dataclass(frozen=True, slots=True)
class Hook:
    """What the dispatcher knows of a subscription (from its WebhookAdded event)."""

    webhook_id: str
    url: str
    filter: str
    max_attempts: int | None
    #: Sequence of the WebhookAdded event: delivery starts after it.
    added_seq: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    body: bytes
    event_id: str
    event_type: str
    subject: str

    @classmethod
    def parse(cls, seq: int, subject: str, body: bytes) -> StoredEvent:
        """Id and type read leniently: an event of a newer schema is delivered all the same."""
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        return cls(seq, body, str(doc.get("id") or f"seq-{seq}"), str(doc.get("type", "")), subject)


class Secrets:
    """Signing secrets by webhook id, read from their KV bucket and kept in memory."""

    def __init__(self, kv: Bucket) -> None:
        self.kv = kv
        self._known: dict[str, str] = {}

    async def get(self, webhook_id: str) -> str | None:
        secret = self._known.get(webhook_id)
        if secret is None:
            value = await self.kv.get(webhook_id)
            if not value:
                return None
            secret = self._known[webhook_id] = value.decode()
        return secret

    def forget(self, webhook_id: str) -> None:
        self._known.pop(webhook_id, None)


Keepalive = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


@dataclass
class Deliverer:
    sender: Sender
    books: Books
    secrets: Secrets
    config: WebhookSettings
    rng: random.Random

    def max_attempts(self, hook: Hook) -> int:
        return hook.max_attempts or self.config.max_attempts

    async def deliver(
        self,
        hook: Hook,
        event: StoredEvent,
        *,
        first_attempt: int = 1,
        redelivery: str | None = None,
        keepalive: Keepalive = _nothing,
        handled: tuple[str, ...] = (),
        maybe_duplicate: bool = False,
    ) -> DeliveryAttempt:
        """Attempt until delivered, refused or out of attempts; every attempt is recorded, and
        the last record says whether the event was dead-lettered. Returns the last record."""
        limit = max(self.max_attempts(hook), first_attempt)
        attempt = first_attempt
        while True:
            await keepalive()
            answer = await self._attempt(hook, event)
            last = answer.delivered or answer.refused or attempt >= limit
            record = DeliveryAttempt(
                webhook_id=hook.webhook_id,
                event_id=event.event_id,
                event_seq=event.seq,
                event_type=event.event_type,
                subject=event.subject,
                attempt=attempt,
                outcome=(
                    "delivered" if answer.delivered else "refused" if answer.refused else "failed"
                ),
                status_code=answer.status_code,
                error=answer.error,
                latency_ms=answer.latency_ms,
                at=datetime.now(UTC),
                dead_lettered=last and not answer.delivered,
                redelivery=redelivery,
                maybe_duplicate=maybe_duplicate and attempt == first_attempt,
            )
            if record.dead_lettered:
                # The dead letter is written before the record that says so: a crash in between
                # leaves a dead letter whose last record is "failed", which is retried (not lost).
                await self.books.put_dead_letter(
                    DeadLetter(
                        **record.model_dump(include=_AS_LAST_ATTEMPT),
                        attempts=attempt,
                        handled=[*handled, redelivery] if redelivery else list(handled),
                    )
                )
            await self.books.record(record)
            if last:
                return record
            await keepalive()
            await asyncio.sleep(
                retry_delay(
                    attempt,
                    base=self.config.backoff_base_s,
                    cap=self.config.backoff_max_s,
                    rng=self.rng,
                )
            )
            attempt += 1

    async def _attempt(self, hook: Hook, event: StoredEvent) -> Answer:
        secret = await self.secrets.get(hook.webhook_id)
        if secret is None:
            # Retried: the client writes the secret before it sends `webhook.add`, so a missing
            # one is a bucket that is not readable yet, or a secret removed by hand.
            return Answer(None, f"no signing secret for webhook {hook.webhook_id}", 0.0)
        return await self.sender.post(hook.url, secret, event.event_id, event.body)
