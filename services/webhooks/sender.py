"""One HTTP attempt: the event as a structured-mode CloudEvent, signed per Standard Webhooks.

The body is the event exactly as it is stored on the log (it already is a CloudEvents 1.0 JSON
document), so a receiver can check it against the log byte for byte. `webhook-id` is the event's
id, the same on every attempt, so receivers can drop duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import certifi
import httpx
from standardwebhooks import Webhook

from schemas import names
from services.webhooks.targets import TargetGuard, TargetUnresolved

#: Bytes of a receiver's answer kept in an error message.
_BODY_EXCERPT = 200


@dataclass(frozen=True, slots=True)
class Answer:
    """What one attempt came to. `refused` attempts were never sent (the target is forbidden)."""

    status_code: int | None
    error: str
    latency_ms: float
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signed_headers(secret: str, event_id: str, body: str, when: datetime) -> dict[str, str]:
    return {
        "content-type": names.CONTENT_TYPE_CLOUDEVENTS_JSON,
        names.HEADER_WEBHOOK_ID: event_id,
        names.HEADER_WEBHOOK_TIMESTAMP: str(int(when.timestamp())),
        names.HEADER_WEBHOOK_SIGNATURE: Webhook(secret).sign(event_id, when, body),
    }


class ClientPool:
    """HTTP clients of one connection each, lent out per request and kept per origin.

    One `httpx.AsyncClient` with many connections spends its time in httpcore's pool bookkeeping,
    which walks every connection for every request: measured here against a local receiver, 32
    concurrent POSTs through one client made ~160/s, through 32 one-connection clients ~1,400/s
    (bench/surfaces_webhooks.py keeps both as baselines). Each client here holds at most one
    connection and serves one request at a time, so that walk stays trivial.
    """

    def __init__(self, *, timeout: float, per_origin: int) -> None:
        self.timeout = timeout
        self.per_origin = per_origin
        self._idle: dict[str, list[httpx.AsyncClient]] = {}
        self._count: dict[str, int] = {}
        self._freed: dict[str, asyncio.Condition] = {}
        self._all: list[httpx.AsyncClient] = []
        # One TLS context for all clients: building one loads the CA bundle (~20 ms each).
        self._tls = ssl.create_default_context(cafile=certifi.where())

    def _new(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            verify=self._tls,
            follow_redirects=False,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            headers={"user-agent": "swarm-webhooks/1"},
        )
        self._all.append(client)
        return client

    @contextlib.asynccontextmanager
    async def client(self, url: str) -> AsyncIterator[httpx.AsyncClient]:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        idle = self._idle.setdefault(origin, [])
        freed = self._freed.setdefault(origin, asyncio.Condition())
        async with freed:
            while not idle and self._count.get(origin, 0) >= self.per_origin:
                await freed.wait()
            if idle:
                client = idle.pop()
            else:
                self._count[origin] = self._count.get(origin, 0) + 1
                client = self._new()
        try:
            yield client
        finally:
            idle.append(client)
            async with freed:
                freed.notify()

    async def close(self) -> None:
        for client in self._all:
            await client.aclose()
        self._all.clear()
        self._idle.clear()
        self._count.clear()


class Sender:
    """Posts events (redirects never followed), after the target guard has allowed the target."""

    def __init__(self, guard: TargetGuard, *, timeout: float, per_origin: int = 64) -> None:
        self.guard = guard
        self.clients = ClientPool(timeout=timeout, per_origin=per_origin)

    async def close(self) -> None:
        await self.clients.close()

    async def post(self, url: str, secret: str, event_id: str, body: bytes) -> Answer:
        began = time.perf_counter()
        try:
            refusal = await self.guard.refusal(url)
        except TargetUnresolved as exc:
            return Answer(None, str(exc), _ms(began))
        if refusal is not None:
            return Answer(None, refusal, _ms(began), refused=True)
        text = body.decode()
        try:
            headers = signed_headers(secret, event_id, text, datetime.now(UTC))
        except Exception as exc:  # a malformed secret is the subscriber's error, not a crash
            return Answer(None, f"cannot sign with the subscription's secret: {exc}", _ms(began))
        try:
            async with self.clients.client(url) as client:
                response = await client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return Answer(None, f"timeout: {type(exc).__name__}", _ms(began))
        except httpx.HTTPError as exc:
            return Answer(None, f"{type(exc).__name__}: {exc}", _ms(began))
        latency = _ms(began)
        code = response.status_code
        if 200 <= code < 300:
            return Answer(code, "", latency)
        if response.is_redirect:
            where = response.headers.get("location", "?")
            return Answer(code, f"redirect to {where} not followed", latency)
        return Answer(code, f"HTTP {code}: {response.text[:_BODY_EXCERPT]}", latency)


def _ms(began: float) -> float:
    return round((time.perf_counter() - began) * 1000, 3)
