"""Webhook subscriptions: commands and events, and the rules for a subscription's filter.

A subscription is an aggregate of the audit log (`swarm.evt.webhook.<webhook id>.…`), so who
subscribed what, and when it was removed, is on the record. Its id is the id of the
`webhook.add` command that created it, which lets a client store the signing secret under that
id before it sends the command.

The signing secret itself is not on the log: anyone who can read the log could forge deliveries
with it. The client puts it in the `swarm-webhook-secrets` KV bucket (readable by the dispatcher)
and the events carry only its fingerprint, so the log still says which secret a subscription was
created with.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas import names
from schemas.envelope import Payload
from schemas.registry import REGISTRY
from schemas.specs import Id

#: Deliveries of one event before it is dead-lettered, when a subscription does not say.
DEFAULT_MAX_ATTEMPTS: Final = 5
MAX_ATTEMPTS_LIMIT: Final = 50
#: A subscription filter must stay inside the audit log's subjects.
FILTER_ROOT: Final = names.EVENTS_PREFIX + "."
_FILTER_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

Url = Annotated[str, Field(min_length=1, max_length=2048)]
Filter = Annotated[str, Field(min_length=1, max_length=256)]
#: Hex sha256 of the raw secret key, shortened: names a secret without revealing it.
Fingerprint = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
#: Attempts per event before it is dead-lettered; None means the dispatcher's default.
MaxAttempts = Annotated[int | None, Field(ge=1, le=MAX_ATTEMPTS_LIMIT)]
#: A subscription's description, or why it was removed.
Note = Annotated[str, Field(max_length=200)]
#: CloudEvents ids of dead-lettered events; empty means every dead letter of the subscription.
EventIds = Annotated[list[Id], Field(max_length=1000)]


def filter_problem(pattern: str) -> str | None:
    """Why `pattern` is not a valid subscription filter, or None when it is.

    Valid: a NATS subject pattern under `swarm.evt.` whose tokens are literal subject tokens,
    `*` (exactly one token) or a final `>` (one or more tokens).
    """
    if not pattern.startswith(FILTER_ROOT):
        return f"filter {pattern!r} must start with {FILTER_ROOT!r}"
    tokens = pattern.split(".")
    if len(tokens) < 3:
        return f"filter {pattern!r} names nothing below {names.EVENTS_PREFIX}"
    for i, token in enumerate(tokens):
        if token == ">":
            if i != len(tokens) - 1:
                return f"filter {pattern!r}: '>' may only be the last token"
        elif token != "*" and not _FILTER_TOKEN.fullmatch(token):
            return (
                f"filter {pattern!r}: token {token!r} must be '*', '>' or match "
                f"{_FILTER_TOKEN.pattern}"
            )
    return None


@REGISTRY.command(names.WEBHOOK_AGGREGATE, "add")
class AddWebhook(Payload):
    """Subscribe `url` to the events whose subject matches `filter`; the id is the command's."""

    url: Url
    filter: Filter
    max_attempts: MaxAttempts = None
    secret_fingerprint: Fingerprint
    description: Note = ""


@REGISTRY.command(names.WEBHOOK_AGGREGATE, "remove")
class RemoveWebhook(Payload):
    webhook_id: Id
    reason: Note = ""


@REGISTRY.command(names.WEBHOOK_AGGREGATE, "redeliver")
class RedeliverWebhook(Payload):
    """Send dead-lettered events of one subscription again: those named, or all of them."""

    webhook_id: Id
    event_ids: EventIds = Field(default_factory=list)


@REGISTRY.event(names.WEBHOOK_AGGREGATE, "added")
class WebhookAdded(Payload):
    webhook_id: Id
    url: Url
    filter: Filter
    max_attempts: MaxAttempts = None
    secret_fingerprint: Fingerprint
    description: Note = ""


@REGISTRY.event(names.WEBHOOK_AGGREGATE, "removed")
class WebhookRemoved(Payload):
    webhook_id: Id
    reason: Note = ""


@REGISTRY.event(names.WEBHOOK_AGGREGATE, "redelivery_requested")
class WebhookRedeliveryRequested(Payload):
    """The dispatcher sends the named dead letters again (all when `event_ids` is empty); the
    event's own id marks the dead letters it has handled, so a restart does not repeat it."""

    webhook_id: Id
    event_ids: EventIds = Field(default_factory=list)


# --- Delivery books (not log events: written by the dispatcher, read by clients) -----------------

AttemptOutcome = Literal["delivered", "failed", "refused", "duplicate"]


class DeliveryAttempt(BaseModel):
    """One attempt to deliver one event to one subscription (stream SWARM_WEBHOOK_DELIVERIES).

    Duplicates after a crash, as far as the dispatcher can tell: `duplicate` records an event
    that came back although an earlier attempt had been delivered (it is not sent again);
    `maybe_duplicate` marks an attempt at an event that came back without such a record, which
    an interrupted earlier run may have sent already (the receiver sees the same webhook-id).
    """

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    webhook_id: str
    event_id: str
    event_seq: int
    event_type: str = ""
    subject: str = ""
    attempt: int
    outcome: AttemptOutcome
    status_code: int | None = None
    error: str = ""
    latency_ms: float = 0.0
    at: datetime
    #: Set on the attempt after which the event was dead-lettered.
    dead_lettered: bool = False
    #: The redelivery request this attempt answers, if any.
    redelivery: str | None = None
    #: JetStream handed the event out before and no attempt was recorded as delivered.
    maybe_duplicate: bool = False


class DeadLetter(BaseModel):
    """An event given up on (bucket swarm-webhook-dead, key `<webhook id>.<event seq>`)."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    webhook_id: str
    event_id: str
    event_seq: int
    event_type: str = ""
    subject: str = ""
    attempts: int
    status_code: int | None = None
    error: str = ""
    at: datetime
    #: Redelivery requests that already tried this dead letter (so a restart does not repeat).
    handled: list[str] = Field(default_factory=list)
