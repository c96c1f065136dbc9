"""`swarm webhook`: subscribe URLs to events, list and remove them, see and redo deliveries.

Adding and removing are commands decided by the Hive, so both are on the audit log. The signing
secret is not: it is generated here (unless given), stored in the `swarm-webhook-secrets` bucket
under the subscription's id before the command is sent, and shown once. The log carries only its
fingerprint. Deliveries are made by the webhook dispatcher (`python -m services.webhooks`, started
by `swarm up`), which records every attempt and dead-letters what it gives up on.
"""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer
from nats.js.errors import NotFoundError
from rich.console import RenderableType
from rich.text import Text

from schemas import names
from schemas.webhooks import (
    MAX_ATTEMPTS_LIMIT,
    AddWebhook,
    RedeliverWebhook,
    RemoveWebhook,
    filter_problem,
)
from swarm.cli import connect, publish
from swarm.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Format,
    emit,
    stdout_console,
    table,
)
from swarm.cli.queries import HiveQueries
from swarm.cli.verbs import (
    Nothing,
    OutputOption,
    TimeoutOption,
    age,
    conclude,
    finish,
    issue,
    prepare,
    read_floor,
    rejection,
    show,
)
from swarm.kernel.eventlog import EventLog
from swarm.kernel.webhook_storage import (
    dead_letter_values,
    dead_letters_bucket,
    fingerprint,
    new_secret,
    secret_key,
    secrets_bucket,
)

app = typer.Typer(
    help="Send events to HTTP endpoints: signed CloudEvents, retried, recorded.",
    no_args_is_help=True,
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="webhook")


_COMMAND_STREAMS = (names.STREAM_COMMANDS, names.STREAM_EVENTS)
WebhookId = Annotated[str, typer.Argument(help="The webhook's id (`swarm webhook ls`).")]
SubscriptionOption = Annotated[
    str | None,
    typer.Option("--subscription", "-s", help="Only this webhook's.", show_default=False),
]


@app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="Where to POST the events (http or https).")],
    filter: Annotated[
        str,
        typer.Option(
            "--filter",
            "-f",
            help="Subject pattern of the events to send, e.g. 'swarm.evt.agent.*.replica_failed' "
            "('*' one token, '>' the rest).",
        ),
    ],
    secret: Annotated[
        str | None,
        typer.Option(
            "--secret",
            help="Standard Webhooks secret (whsec_<base64>); generated and shown once if left out.",
            show_default=False,
        ),
    ] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts",
            min=1,
            max=MAX_ATTEMPTS_LIMIT,
            help="Attempts per event before it is dead-lettered.",
            show_default="the dispatcher's, 5",
        ),
    ] = None,
    description: Annotated[str, typer.Option("--description", help="A note for people.")] = "",
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Subscribe URL to the events matching --filter."""
    generated = secret is None
    key = secret or new_secret()

    async def main() -> int:
        problem = filter_problem(filter)
        if problem is not None:
            raise CliError(problem, code=EXIT_USAGE, hint="e.g. --filter 'swarm.evt.agent.>'")
        try:
            secret_key(key)
        except ValueError as exc:
            raise CliError(f"--secret: {exc}", code=EXIT_USAGE) from None
        settings = connect.load_settings()
        data: dict[str, Any] = {
            "url": url,
            "filter": filter,
            "secret_fingerprint": fingerprint(key),
            "description": description,
        }
        if max_attempts is not None:
            data["max_attempts"] = max_attempts
        event = prepare(AddWebhook, data, settings)
        webhook_id = str(event["id"])
        target = connect.resolve_nats_url(nats_url, settings)
        async with connect.session(target, settings, streams=_COMMAND_STREAMS) as log:
            secrets = await secrets_bucket(log.js, settings)
            # Stored first: the dispatcher may deliver the moment the subscription is on the log.
            await secrets.put(webhook_id, key.encode())
            # Without an outcome (exit 3) the secret stays: the command may still be accepted.
            issued = await issue(log, event, within=timeout)
            if not issued.accepted:
                with contextlib.suppress(Exception):
                    await secrets.delete(webhook_id)
        if output != Format.TABLE:
            emit(
                {
                    "webhook_id": webhook_id,
                    "url": url,
                    "filter": filter,
                    "secret": key if generated and issued.accepted else None,
                    "secret_fingerprint": fingerprint(key),
                    "outcome": publish.outcome_document(issued.outcome),
                },
                output,
            )
        if not issued.accepted:
            raise rejection(issued.outcome, what=f"adding webhook {url}", namespace="default")
        if output == Format.TABLE:
            console = stdout_console()
            console.print(Text(f"webhook {webhook_id} added: {filter} -> {url}"))
            if generated:
                console.print(
                    Text(f"secret: {key}  (shown once; receivers verify signatures with it)")
                )
        return EXIT_OK

    finish(main())


@app.command("ls")
def ls(output: OutputOption = Format.TABLE, nats_url: connect.NatsUrlOption = None) -> None:
    """List the webhooks."""

    async def main() -> int:
        settings = connect.load_settings()
        target = connect.resolve_nats_url(nats_url, settings)
        async with connect.session(target, settings, streams=(names.STREAM_EVENTS,)) as log:
            queries = HiveQueries(log.nc)

            async def fetch() -> dict[str, Any]:
                answer = await queries.ask(
                    names.QUERY_WEBHOOKS_LIST, at_least=await read_floor(log)
                )
                hooks = answer.get("webhooks")
                if not isinstance(hooks, list):
                    raise CliError("the Hive's answer has no list 'webhooks'", code=EXIT_FAILED)
                return {"webhooks": hooks, "applied_seq": queries.applied_seq}

            await show(
                fetch, lambda v: webhooks_table(v["webhooks"]), output, watch=False, title=""
            )
        return EXIT_OK

    finish(main())


def webhooks_table(hooks: Sequence[Mapping[str, Any]]) -> RenderableType:
    if not hooks:
        return Nothing("no webhooks")
    rows = [
        [
            h.get("webhook_id"),
            h.get("filter"),
            h.get("url"),
            h.get("max_attempts") or "default",
            h.get("secret_fingerprint"),
            age(h.get("created_at")),
        ]
        for h in hooks
    ]
    return table(["ID", "FILTER", "URL", "MAX ATTEMPTS", "SECRET", "AGE"], rows, title=None)


@app.command("rm")
def rm(
    webhook_id: WebhookId,
    reason: Annotated[str, typer.Option("--reason", help="Why, for the log.")] = "",
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Remove a webhook: nothing more is sent to it, and its secret is deleted."""

    async def main() -> int:
        settings = connect.load_settings()
        event = prepare(RemoveWebhook, {"webhook_id": webhook_id, "reason": reason}, settings)
        target = connect.resolve_nats_url(nats_url, settings)
        async with connect.session(target, settings, streams=_COMMAND_STREAMS) as log:
            issued = await issue(log, event, within=timeout)
            if issued.accepted:
                secrets = await secrets_bucket(log.js, settings)
                with contextlib.suppress(Exception):
                    await secrets.delete(webhook_id)
        conclude(
            issued,
            output,
            what=f"removing webhook {webhook_id}",
            done=f"webhook {webhook_id} removed",
            namespace="default",
        )
        return EXIT_OK

    finish(main())


@app.command("deliveries")
def deliveries(
    subscription: SubscriptionOption = None,
    dead: Annotated[
        bool, typer.Option("--dead", help="Show the dead letters instead of the attempts.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most recent attempts shown.")] = 50,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Delivery attempts (status code, latency, error), newest last; or the dead letters."""

    async def main() -> int:
        settings = connect.load_settings()
        target = connect.resolve_nats_url(nats_url, settings)
        async with connect.session(target, settings) as log:
            if dead:
                letters = await _dead_letters(log, subscription)

                async def fetch_dead() -> dict[str, Any]:
                    return {"dead_letters": letters}

                await show(
                    fetch_dead,
                    lambda v: dead_table(v["dead_letters"]),
                    output,
                    watch=False,
                    title="",
                )
                return EXIT_OK
            attempts = await _attempts(log, subscription, limit)

            async def fetch() -> dict[str, Any]:
                return {"deliveries": attempts}

            await show(
                fetch, lambda v: attempts_table(v["deliveries"]), output, watch=False, title=""
            )
        return EXIT_OK

    finish(main())


async def _attempts(log: EventLog, subscription: str | None, limit: int) -> list[dict[str, Any]]:
    try:
        await log.js.stream_info(names.STREAM_WEBHOOK_DELIVERIES)
    except NotFoundError:
        return []  # the dispatcher creates the stream when it first starts
    recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
    async for delivery in log.replay(
        names.STREAM_WEBHOOK_DELIVERIES, subjects=[names.webhook_deliveries_of(subscription)]
    ):
        with contextlib.suppress(ValueError):
            record = json.loads(delivery.data)
            if isinstance(record, dict):
                recent.append(record)
    return list(recent)


async def _dead_letters(log: EventLog, subscription: str | None) -> list[dict[str, Any]]:
    kv = await dead_letters_bucket(log.js, log.settings)
    letters = []
    for value in await dead_letter_values(kv, subscription):
        with contextlib.suppress(ValueError):
            letter = json.loads(value)
            if isinstance(letter, dict):
                letters.append(letter)
    return sorted(letters, key=lambda d: (str(d.get("at", "")), d.get("event_seq", 0)))


def attempts_table(attempts: Sequence[Mapping[str, Any]]) -> RenderableType:
    if not attempts:
        return Nothing("no deliveries recorded")
    rows = []
    for a in attempts:
        outcome = str(a.get("outcome", "?"))
        if a.get("dead_lettered"):
            outcome += " (dead)"
        if a.get("maybe_duplicate"):
            outcome += " (maybe a duplicate)"
        rows.append(
            [
                age(a.get("at")),
                a.get("webhook_id"),
                a.get("event_id"),
                a.get("attempt"),
                Text(outcome, style=_style(a)),
                a.get("status_code") if a.get("status_code") is not None else "-",
                f"{float(a.get('latency_ms') or 0):.1f}",
                a.get("error") or "",
            ]
        )
    columns = ["AGE", "WEBHOOK", "EVENT", "ATTEMPT", "OUTCOME", "STATUS", "LATENCY MS", "ERROR"]
    return table(columns, rows, title=None)


def _style(attempt: Mapping[str, Any]) -> str:
    outcome = str(attempt.get("outcome", ""))
    if outcome == "delivered":
        return "green"
    if outcome == "duplicate":
        return "dim"
    return "bold red" if attempt.get("dead_lettered") or outcome == "refused" else "yellow"


def dead_table(letters: Sequence[Mapping[str, Any]]) -> RenderableType:
    if not letters:
        return Nothing("no dead letters")
    rows = [
        [
            age(d.get("at")),
            d.get("webhook_id"),
            d.get("event_id"),
            d.get("event_type"),
            d.get("attempts"),
            d.get("status_code") if d.get("status_code") is not None else "-",
            d.get("error") or "",
        ]
        for d in letters
    ]
    columns = ["AGE", "WEBHOOK", "EVENT", "TYPE", "ATTEMPTS", "STATUS", "LAST ERROR"]
    return table(columns, rows, title=None)


@app.command("redeliver")
def redeliver(
    event_ids: Annotated[
        list[str] | None,
        typer.Argument(help="Ids of dead-lettered events to send again.", show_default=False),
    ] = None,
    all_dead: Annotated[
        bool, typer.Option("--all-dead", help="Send every dead letter again.")
    ] = False,
    subscription: SubscriptionOption = None,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Send dead-lettered events again (each webhook gets a `webhook.redeliver` command)."""
    wanted = list(event_ids or [])

    async def main() -> int:
        if bool(wanted) == all_dead:
            raise CliError("give event ids or --all-dead (not both)", code=EXIT_USAGE)
        settings = connect.load_settings()
        target = connect.resolve_nats_url(nats_url, settings)
        async with connect.session(target, settings, streams=_COMMAND_STREAMS) as log:
            letters = await _dead_letters(log, subscription)
            by_hook: dict[str, list[str]] = {}
            for letter in letters:
                if all_dead or letter.get("event_id") in wanted:
                    by_hook.setdefault(str(letter.get("webhook_id")), []).append(
                        str(letter.get("event_id"))
                    )
            found = {e for ids in by_hook.values() for e in ids}
            missing = [e for e in wanted if e not in found]
            if missing:
                raise CliError(
                    f"not dead-lettered: {', '.join(missing)}",
                    code=EXIT_FAILED,
                    hint="`swarm webhook deliveries --dead` lists the dead letters",
                )
            if not by_hook:
                if output == Format.TABLE:
                    stdout_console().print(Text("no dead letters to redeliver"))
                else:
                    emit({"requests": []}, output)
                return EXIT_OK
            documents = []
            for hook, ids in sorted(by_hook.items()):
                event = prepare(
                    RedeliverWebhook,
                    {"webhook_id": hook, "event_ids": [] if all_dead else sorted(set(ids))},
                    settings,
                )
                issued = await issue(log, event, within=timeout)
                documents.append(publish.outcome_document(issued.outcome))
                if not issued.accepted:
                    raise rejection(
                        issued.outcome, what=f"redelivering to {hook}", namespace="default"
                    )
                if output == Format.TABLE:
                    stdout_console().print(
                        Text(f"webhook {hook}: {len(ids)} dead letter(s) queued for redelivery")
                    )
        if output != Format.TABLE:
            emit({"requests": documents}, output)
        return EXIT_OK

    finish(main())
