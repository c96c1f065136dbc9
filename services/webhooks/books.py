"""The dispatcher's books: attempt records (a stream with an age limit) and dead letters (KV).

An event's attempts for one subscription share one subject, so the last of them is one direct
read away: that is how an event handed out again after a crash is recognised as delivered.
"""

from __future__ import annotations

import json

from schemas import names
from schemas.webhooks import DeadLetter, DeliveryAttempt
from swarm.kernel.admin import Bucket
from swarm.kernel.eventlog import AppendRequest, EventLog, NotFound
from swarm.kernel.webhook_storage import dead_letter_values


class Books:
    def __init__(self, log: EventLog, dead: Bucket) -> None:
        self.log = log
        self.dead = dead

    async def record(self, attempt: DeliveryAttempt) -> None:
        """Append one attempt; waits for the stream to have it (an ack follows only after)."""
        msg_id = ".".join(
            (
                attempt.webhook_id,
                str(attempt.event_seq),
                str(attempt.attempt),
                attempt.outcome,
                attempt.redelivery or "",
            )
        )
        await self.log.append_raw(
            AppendRequest(
                names.webhook_delivery_subject(attempt.webhook_id, attempt.event_seq),
                attempt.model_dump_json().encode(),
                msg_id,
            )
        )

    async def last_attempt(self, webhook_id: str, event_seq: int) -> DeliveryAttempt | None:
        subject = names.webhook_delivery_subject(webhook_id, event_seq)
        try:
            msg = await self.log.last_message(names.STREAM_WEBHOOK_DELIVERIES, subject)
        except NotFound:
            return None
        return DeliveryAttempt.model_validate_json(msg.data or b"{}")

    async def put_dead_letter(self, letter: DeadLetter) -> None:
        key = names.webhook_dead_letter_key(letter.webhook_id, letter.event_seq)
        await self.dead.put(key, letter.model_dump_json().encode())

    async def dead_letters(self, webhook_id: str) -> list[DeadLetter]:
        values = await dead_letter_values(self.dead, webhook_id)
        letters = [DeadLetter.model_validate(json.loads(v)) for v in values]
        return sorted(letters, key=lambda d: d.event_seq)

    async def remove_dead_letter(self, letter: DeadLetter) -> None:
        await self.dead.delete(names.webhook_dead_letter_key(letter.webhook_id, letter.event_seq))
