"""One HTTP attempt: the event as a structured-mode CloudEvent, signed per Standard Webhooks.

The body is the event exactly as it is stored on the log (it already is a CloudEvents 1.0 JSON
document), so a receiver can check it against the log byte for byte. `webhook-id` is the event's
id, the same on every attempt, so receivers can drop duplicates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

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


class Sender:
    """Posts events; owns the HTTP client (redirects never followed) and the target guard."""

    def __init__(self, guard: TargetGuard, *, timeout: float, max_connections: int = 100) -> None:
        self.guard = guard
        self.client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections),
            headers={"user-agent": "swarm-webhooks/1"},
        )

    async def close(self) -> None:
        await self.client.aclose()

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
            response = await self.client.post(url, content=body, headers=headers)
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
