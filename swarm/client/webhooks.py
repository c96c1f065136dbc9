"""Webhook subscriptions for any client: add and remove them, list them, read their deliveries,
send dead letters again.

What makes a subscription more than a command is its signing secret, which must never reach the
log (anyone who reads the log could sign deliveries with it). So adding one is done here, the
same way for the CLI and the HTTP API: the secret is generated (or checked), stored in the
`swarm-webhook-secrets` bucket under the subscription's id *before* the `webhook.add` command is
sent (the dispatcher may deliver the moment the subscription is on the log), and deleted again if
the Hive rejects the command; the command carries only its fingerprint. Removing deletes the
secret once the Hive has accepted the removal. A `webhook.add` sent as a plain command would
create a subscription without a stored secret, which the dispatcher could never sign for:
`plain_command_problem` says so, for front ends that send arbitrary commands.

Nothing here prints or knows HTTP; failures are `ClientError`s.
"""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas import names
from schemas.webhooks import AddWebhook, RedeliverWebhook, RemoveWebhook, filter_problem
from swarm.client import commands
from swarm.client.commands import DEFAULT_SOURCE, Issued, Outcome, Sent
from swarm.client.errors import FAILED, INVALID, UNAVAILABLE, ClientError, FieldProblem
from swarm.client.queries import HiveQueries
from swarm.kernel.admin import LogAdmin
from swarm.kernel.eventlog import EventLog, EventLogError, NotFound
from swarm.kernel.webhook_storage import (
    dead_letter_values,
    dead_letters_bucket,
    fingerprint,
    new_secret,
    secret_key,
    secrets_bucket,
)

__all__ = [
    "NewWebhook",
    "NotDeadLettered",
    "Redelivery",
    "add",
    "attempts",
    "dead_letters",
    "forget_secret",
    "keep_books",
    "keeps_books",
    "new_webhook",
    "plain_command_problem",
    "plan_redelivery",
    "remove",
    "remove_command",
    "settle",
    "subscriptions",
]


@dataclass(frozen=True, slots=True)
class NewWebhook:
    """A checked `webhook.add` command and the secret its deliveries will be signed with."""

    command: dict[str, Any]
    secret: str
    #: The secret was generated here (so the caller has not seen it yet and must be shown it).
    generated: bool

    @property
    def webhook_id(self) -> str:
        """The subscription's id: the id of the command that creates it."""
        return str(self.command["id"])

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.command["data"]
        return data


class NotDeadLettered(ClientError):
    """Events asked to be redelivered that are not among the dead letters."""

    def __init__(self, missing: Sequence[str]) -> None:
        super().__init__(f"not dead-lettered: {', '.join(missing)}", code=FAILED)
        self.missing = tuple(missing)


@dataclass(frozen=True, slots=True)
class Redelivery:
    """One `webhook.redeliver` command to send: the dead letters of one subscription."""

    webhook_id: str
    #: The dead-lettered events it concerns.
    event_ids: tuple[str, ...]
    command: dict[str, Any]


# --- Adding and removing -------------------------------------------------------------------------


def new_webhook(
    url: str,
    filter: str,
    *,
    secret: str | None = None,
    max_attempts: int | None = None,
    description: str = "",
    identity: str,
    source: str = DEFAULT_SOURCE,
) -> NewWebhook:
    """The `webhook.add` command for `url` and `filter`, with a new secret unless one is given.

    Checked before anything is stored or sent: the filter's rules (the Hive checks them again),
    the secret's form (only the client ever sees it) and the command's schema. The URL's rules
    are the Hive's alone, so a rejection names them.
    """
    problem = filter_problem(filter)
    if problem is not None:
        raise ClientError(
            problem,
            code=INVALID,
            errors=[FieldProblem("filter", problem, "value_error")],
            hint="e.g. 'swarm.evt.agent.*.replica_failed' ('*' one token, '>' the rest)",
        )
    generated = secret is None
    key = new_secret() if secret is None else secret
    try:
        secret_key(key)
    except ValueError as exc:
        raise ClientError(
            f"secret: {exc}",
            code=INVALID,
            errors=[FieldProblem("secret", str(exc), "value_error")],
            hint="a Standard Webhooks secret is whsec_ and the base64 of 24 to 64 bytes; "
            "leave it out to have one generated",
        ) from None
    data: dict[str, Any] = {
        "url": url,
        "filter": filter,
        "secret_fingerprint": fingerprint(key),
        "description": description,
    }
    if max_attempts is not None:
        data["max_attempts"] = max_attempts
    command = commands.prepare(AddWebhook, data, identity=identity, source=source)
    return NewWebhook(command=command, secret=key, generated=generated)


async def add(
    log: EventLog, new: NewWebhook, *, within: float | None, with_caused: bool = False
) -> tuple[Sent, Issued | None]:
    """Store the secret, then send the command; with `within`, wait that long for its outcome.

    A rejected command's secret is deleted. Without an outcome (not waited for, or none in
    time) the secret stays: the command is queued and may still be accepted (`settle` does the
    rest once its outcome comes).
    """
    try:
        secrets = await secrets_bucket(log)
        # Stored first: the dispatcher may deliver the moment the subscription is on the log.
        await secrets.put(new.webhook_id, new.secret.encode())
    except (EventLogError, TimeoutError) as exc:
        raise ClientError(
            f"could not store the webhook's secret: {exc}", code=UNAVAILABLE
        ) from None
    return await _send(log, new.command, within=within, with_caused=with_caused)


def remove_command(
    webhook_id: str, reason: str = "", *, identity: str, source: str = DEFAULT_SOURCE
) -> dict[str, Any]:
    """The checked `webhook.remove` command."""
    return commands.prepare(
        RemoveWebhook,
        {"webhook_id": webhook_id, "reason": reason},
        identity=identity,
        source=source,
    )


async def remove(
    log: EventLog,
    command: Mapping[str, Any],
    *,
    within: float | None,
    with_caused: bool = False,
) -> tuple[Sent, Issued | None]:
    """Send a `webhook.remove` command; once the Hive has accepted it, delete the secret.

    Without an outcome the secret stays in its bucket until `settle` sees one (where it is
    harmless meanwhile: nothing is sent for a removed subscription).
    """
    return await _send(log, command, within=within, with_caused=with_caused)


async def _send(
    log: EventLog, command: Mapping[str, Any], *, within: float | None, with_caused: bool
) -> tuple[Sent, Issued | None]:
    if within is None:
        return await commands.send(log, command), None
    sent, issued = await commands.send_and_wait(
        log, command, within=within, with_caused=with_caused
    )
    if issued is not None:
        await keep_books(log, command, issued.outcome)
    return sent, issued


def keeps_books(command: Mapping[str, Any]) -> bool:
    """Whether the outcome of this command calls for `keep_books`."""
    return command.get("type") in (AddWebhook.TYPE, RemoveWebhook.TYPE)


async def keep_books(log: EventLog, command: Mapping[str, Any], outcome: Outcome) -> None:
    """What a webhook command's outcome means for its secret: a rejected `webhook.add` leaves a
    secret for a subscription that does not exist, an accepted `webhook.remove` one for a
    subscription that no longer does; both are deleted. Other commands: nothing."""
    if command.get("type") == AddWebhook.TYPE and not outcome.accepted:
        await forget_secret(log, str(command["id"]))
    elif command.get("type") == RemoveWebhook.TYPE and outcome.accepted:
        data = command.get("data")
        webhook_id = data.get("webhook_id") if isinstance(data, Mapping) else None
        if isinstance(webhook_id, str):
            await forget_secret(log, webhook_id)


async def settle(
    log: EventLog, command: Mapping[str, Any], *, start_seq: int, within: float
) -> Outcome | None:
    """For a command sent without its outcome: wait up to `within` s for it (at or after
    `start_seq` of the events stream), then `keep_books`. For a long-running client (the HTTP
    API) that answered before the Hive decided."""
    outcome = await commands.wait_for_outcome(
        log, str(command["id"]), start_seq=start_seq, within=within
    )
    if outcome is not None:
        await keep_books(log, command, outcome)
    return outcome


async def forget_secret(log: EventLog, webhook_id: str) -> None:
    """Delete a subscription's secret; best effort (the outcome it follows is what counts)."""
    with contextlib.suppress(Exception):
        secrets = await secrets_bucket(log)
        await secrets.delete(webhook_id)


def plain_command_problem(command_type: object) -> str | None:
    """Why a command of this type must not be sent as a plain command, or None if it may be."""
    if command_type == AddWebhook.TYPE:
        return (
            f"{AddWebhook.TYPE} sent as a plain command would create a subscription without a "
            "stored signing secret, whose deliveries could never be signed"
        )
    return None


# --- Reading -------------------------------------------------------------------------------------


async def subscriptions(queries: HiveQueries, *, at_least: int = 0) -> list[dict[str, Any]]:
    """The subscriptions (not removed) as the Hive knows them, sorted by id; no secrets."""
    answer = await queries.ask(names.QUERY_WEBHOOKS_LIST, at_least=at_least)
    hooks = answer.get("webhooks")
    if not isinstance(hooks, list):
        raise ClientError("the Hive's answer has no list 'webhooks'", code=FAILED)
    return [hook for hook in hooks if isinstance(hook, dict)]


async def attempts(
    log: EventLog, subscription: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The last `limit` delivery attempts (of one subscription, or of all), oldest first."""
    _check_subscription(subscription)
    try:
        try:
            await LogAdmin(log).stream(names.STREAM_WEBHOOK_DELIVERIES)
        except NotFound:
            return []  # the dispatcher creates the stream when it first starts
        recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
        replay = log.replay(
            names.STREAM_WEBHOOK_DELIVERIES,
            subjects=[names.webhook_deliveries_of(subscription)],
            idle_timeout=0.25,
        )
        async with commands.closing(replay) as deliveries:
            async for delivery in deliveries:
                record = _json_object(delivery.data)
                if record is not None:
                    recent.append(record)
    except (EventLogError, TimeoutError) as exc:
        raise _unreadable("the delivery records", exc) from None
    return list(recent)


async def dead_letters(log: EventLog, subscription: str | None = None) -> list[dict[str, Any]]:
    """The events given up on (of one subscription, or of all), oldest first."""
    _check_subscription(subscription)
    try:
        kv = await dead_letters_bucket(log)
        values = await dead_letter_values(kv, subscription)
    except (EventLogError, TimeoutError) as exc:
        raise _unreadable("the dead letters", exc) from None
    letters = [letter for letter in map(_json_object, values) if letter is not None]
    return sorted(letters, key=lambda d: (str(d.get("at", "")), _int(d.get("event_seq"))))


# --- Redelivering --------------------------------------------------------------------------------


async def plan_redelivery(
    log: EventLog,
    *,
    event_ids: Iterable[str] = (),
    all_dead: bool = False,
    subscription: str | None = None,
    identity: str,
    source: str = DEFAULT_SOURCE,
) -> list[Redelivery]:
    """The `webhook.redeliver` commands that send the named dead letters (or all) again, one per
    subscription; `NotDeadLettered` if any named event is not a dead letter (nothing is sent).

    Each front end sends them and reports their outcomes its own way.
    """
    wanted = list(dict.fromkeys(event_ids))
    if bool(wanted) == all_dead:
        raise ClientError("give the ids of dead-lettered events, or all of them", code=INVALID)
    by_hook: dict[str, list[str]] = {}
    for letter in await dead_letters(log, subscription):
        event_id = str(letter.get("event_id"))
        if all_dead or event_id in wanted:
            by_hook.setdefault(str(letter.get("webhook_id")), []).append(event_id)
    found = {e for ids in by_hook.values() for e in ids}
    missing = [e for e in wanted if e not in found]
    if missing:
        raise NotDeadLettered(missing)
    plan = []
    for hook, ids in sorted(by_hook.items()):
        concerned = tuple(sorted(set(ids)))
        command = commands.prepare(
            RedeliverWebhook,
            # Empty means every dead letter of the subscription, also those dead-lettered
            # between this read and the dispatcher's.
            {"webhook_id": hook, "event_ids": [] if all_dead else list(concerned)},
            identity=identity,
            source=source,
        )
        plan.append(Redelivery(webhook_id=hook, event_ids=concerned, command=command))
    return plan


# --- Helpers -------------------------------------------------------------------------------------


def _check_subscription(subscription: str | None) -> None:
    # It becomes a subject token and a key prefix; a wildcard would widen the read.
    if subscription is not None and not names.is_token(subscription):
        raise ClientError(
            f"webhook id {subscription!r} must match {names.TOKEN_PATTERN}", code=INVALID
        )


def _unreadable(what: str, exc: BaseException) -> ClientError:
    return ClientError(f"could not read {what}: {str(exc) or type(exc).__name__}", code=UNAVAILABLE)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
