"""A nats-server of its own per test, a dispatcher in this process, and ways to feed and read it.

Subscriptions are added here the way the Hive records them (a `WebhookAdded` event on the log,
the secret in its bucket): the dispatcher only reads the log, and the Hive's side has tests of
its own (test_decide.py, test_cli.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import Payload, event, events, names, new_id
from schemas.webhooks import DeadLetter, DeliveryAttempt, WebhookAdded, WebhookRedeliveryRequested
from services.webhooks.config import WebhookSettings
from services.webhooks.service import Dispatcher
from swarm.kernel.eventlog import AppendRequest, EventLog
from swarm.kernel.settings import Settings
from swarm.kernel.webhook_storage import (
    dead_letter_values,
    dead_letters_bucket,
    ensure_deliveries_stream,
    fingerprint,
    new_secret,
    secrets_bucket,
)
from tests.helpers import waiting
from tests.helpers.servers import own_nats

#: Fast retries for tests; private targets allowed because the receiver is on loopback.
FAST = {
    "allow_private": True,
    "backoff_base_s": 0.02,
    "backoff_max_s": 0.1,
    "timeout_s": 2.0,
    "ack_wait_s": 3.0,
}


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 45.0, what: str = "condition"
) -> None:
    """`tests.helpers.waiting.wait_until` with the webhook tests' own default time."""
    await waiting.wait_until(check, timeout, what, interval=0.05)


@dataclass
class Bed:
    url: str
    settings: Settings
    log: EventLog
    secret: str

    async def add_hook(
        self, url: str, filter: str, *, max_attempts: int | None = None, secret: str | None = None
    ) -> str:
        webhook_id = new_id()
        kv = await secrets_bucket(self.log)
        await kv.put(webhook_id, (secret or self.secret).encode())
        added = WebhookAdded(
            webhook_id=webhook_id,
            url=url,
            filter=filter,
            max_attempts=max_attempts,
            secret_fingerprint=fingerprint(secret or self.secret),
        )
        await self.append(added, webhook_id)
        return webhook_id

    async def redeliver(self, webhook_id: str, event_ids: list[str] | None = None) -> None:
        await self.append(
            WebhookRedeliveryRequested(webhook_id=webhook_id, event_ids=event_ids or []),
            webhook_id,
        )

    async def append(self, payload: Payload, aggregate_id: str) -> int:
        env = event(payload, aggregate_id=aggregate_id, source="test", identity="user:test")
        appended = await self.log.append_batch([AppendRequest.of(env)])
        return appended[0].seq

    async def agent_events(self, count: int, name: str = "replica_failed") -> list[str]:
        """`count` events `swarm.evt.agent.<id>.<name>`; returns their CloudEvents ids."""
        makers: dict[str, Callable[[str], Payload]] = {
            "replica_failed": lambda a: events.ReplicaFailed(
                agent_id=a, replica_id=f"{a}-0", reason="test"
            ),
            "status_changed": lambda a: events.AgentStatusChanged(
                agent_id=a, status="failed", previous="running", reason="test"
            ),
        }
        envs = [
            event(makers[name](agent_id), aggregate_id=agent_id, source="test")
            for agent_id in (new_id() for _ in range(count))
        ]
        for start in range(0, len(envs), 500):
            await self.log.append_batch([AppendRequest.of(e) for e in envs[start : start + 500]])
        return [e.id for e in envs]

    async def attempts(self, webhook_id: str | None = None) -> list[DeliveryAttempt]:
        out = []
        async for d in self.log.replay(
            names.STREAM_WEBHOOK_DELIVERIES, subjects=[names.webhook_deliveries_of(webhook_id)]
        ):
            out.append(DeliveryAttempt.model_validate_json(d.data))
        return out

    async def dead_letters(self) -> list[DeadLetter]:
        # The product's own reader (a watcher): listing keys and then getting each races with the
        # dispatcher deleting a letter it just redelivered.
        kv = await dead_letters_bucket(self.log)
        values = await dead_letter_values(kv)
        return [DeadLetter.model_validate(json.loads(value)) for value in values]

    @asynccontextmanager
    async def dispatcher(self, **overrides: Any) -> AsyncIterator[Dispatcher]:
        dispatcher = Dispatcher(self.settings, WebhookSettings(**{**FAST, **overrides}))
        task = asyncio.create_task(dispatcher.run())
        try:
            await wait_until(self._live(dispatcher, task), what="dispatcher start")
            yield dispatcher
        finally:
            dispatcher.stop()
            await asyncio.wait_for(task, 15)

    @staticmethod
    def _live(dispatcher: Dispatcher, task: asyncio.Task[None]) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            if task.done():
                task.result()
            return dispatcher.live.is_set()

        return check


@asynccontextmanager
async def bed(root: Path) -> AsyncIterator[Bed]:
    with own_nats(root / "nats") as url:
        settings = Settings(nats_url=url)
        async with await EventLog.connect(url, settings, name="webhook-test") as log:
            await log.ensure_streams()
            await ensure_deliveries_stream(log)
            yield Bed(url, settings, log, new_secret())
