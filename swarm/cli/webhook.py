"""`swarm webhook`: subscribe URLs to events, list and remove them, see and redo deliveries.

Adding and removing are commands decided by the Hive, so both are on the audit log. The signing
secret is not: it is generated (unless given), stored in the `swarm-webhook-secrets` bucket under
the subscription's id before the command is sent, and shown once; the log carries only its
fingerprint. The client layer (`swarm.client.webhooks`, shared with the HTTP API) does all of
that; this module presents it. Deliveries are made by the webhook dispatcher (`python -m
services.webhooks`, started by `swarm up`), which records every attempt and dead-letters what it
gives up on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import RenderableType
from rich.text import Text

from swarm.cli import connect, limits, publish
from swarm.cli.output import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Format,
    emit,
    stdout_console,
    table,
)
from swarm.cli.verbs import (
    Nothing,
    OutputOption,
    TimeoutOption,
    age,
    conclude,
    finish,
    listing,
    rejection,
    show,
)

if TYPE_CHECKING:
    from schemas.views import WebhookView
    from swarm.client.commands import Issued, Sent
    from swarm.client.eventlog import EventLog
    from swarm.client.settings import Settings

app = typer.Typer(
    help="Send events to HTTP endpoints: signed CloudEvents, retried, recorded.",
    no_args_is_help=True,
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="webhook")


def _command_streams() -> tuple[str, ...]:
    from schemas import names

    return (names.STREAM_COMMANDS, names.STREAM_EVENTS)


async def _decided(
    send: Callable[[EventLog], Awaitable[tuple[Sent, Issued | None]]],
    settings: Settings,
    nats_url: str | None,
    timeout: float,
) -> Issued:
    """Send one webhook command with `send` and await the Hive's outcome: no outcome within
    `timeout` is exit 3, and the command stays queued (it may still be accepted)."""
    from swarm.client.commands import NoOutcome

    target = connect.resolve_nats_url(nats_url, settings)
    async with connect.session(target, settings, streams=_command_streams()) as log:
        sent, issued = await send(log)
        if issued is None:
            raise NoOutcome(sent, timeout)
    return issued


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
            max=limits.WEBHOOK_MAX_ATTEMPTS,
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
    from swarm.client import webhooks

    async def main() -> int:
        settings = connect.load_settings()
        try:
            new = webhooks.new_webhook(
                url,
                filter,
                secret=secret,
                max_attempts=max_attempts,
                description=description,
                identity=settings.identity,
                source=publish.CLI_SOURCE,
            )
        except CliError as exc:
            if exc.errors and exc.errors[0].loc == "filter":
                raise CliError(
                    exc.message, code=EXIT_USAGE, hint="e.g. --filter 'swarm.evt.agent.>'"
                ) from None
            if exc.errors and exc.errors[0].loc == "secret":
                raise CliError(f"--{exc.message}", code=EXIT_USAGE) from None
            raise
        # Without an outcome (exit 3) the secret stays: the command may still be accepted.
        issued = await _decided(
            lambda log: webhooks.add(log, new, within=timeout), settings, nats_url, timeout
        )
        if output != Format.TABLE:
            emit(
                {
                    "webhook_id": new.webhook_id,
                    "url": url,
                    "filter": filter,
                    "secret": new.secret if new.generated and issued.accepted else None,
                    "secret_fingerprint": new.data["secret_fingerprint"],
                    "outcome": publish.outcome_document(issued.outcome),
                },
                output,
            )
        if not issued.accepted:
            raise rejection(issued.outcome, what=f"adding webhook {url}", namespace="default")
        if output == Format.TABLE:
            console = stdout_console()
            console.print(Text(f"webhook {new.webhook_id} added: {filter} -> {url}"))
            if new.generated:
                console.print(
                    Text(f"secret: {new.secret}  (shown once; receivers verify signatures with it)")
                )
        return EXIT_OK

    finish(main())


@app.command("ls")
def ls(output: OutputOption = Format.TABLE, nats_url: connect.NatsUrlOption = None) -> None:
    """List the webhooks."""
    from swarm.client import webhooks

    listing(
        nats_url,
        "webhooks",
        lambda queries, floor: webhooks.subscriptions(queries, at_least=floor),
        _webhooks_drawn,
        output,
    )


def _webhooks_drawn(hooks: Sequence[Mapping[str, Any]]) -> RenderableType:
    """The Hive's answer (printed as it came with `-o json`) read as views, as a table."""
    from schemas.views import WebhookView
    from swarm.client.queries import parse_views

    return webhooks_table(parse_views(WebhookView, hooks))


def webhooks_table(hooks: Sequence[WebhookView]) -> RenderableType:
    if not hooks:
        return Nothing("no webhooks")
    rows = [
        [
            h.webhook_id,
            h.filter,
            h.url,
            h.max_attempts or "default",
            h.secret_fingerprint,
            age(h.created_at),
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
    from swarm.client import webhooks

    async def main() -> int:
        settings = connect.load_settings()
        command = webhooks.remove_command(
            webhook_id, reason, identity=settings.identity, source=publish.CLI_SOURCE
        )
        issued = await _decided(
            lambda log: webhooks.remove(log, command, within=timeout), settings, nats_url, timeout
        )
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
    from swarm.client import webhooks

    async def main() -> int:
        target, settings = connect.locate(nats_url)
        async with connect.session(target, settings) as log:
            draw: Callable[[Sequence[Mapping[str, Any]]], RenderableType]
            if dead:
                key, draw = "dead_letters", dead_table
                found = await webhooks.dead_letters(log, subscription)
            else:
                key, draw = "deliveries", attempts_table
                found = await webhooks.attempts(log, subscription, limit)

            async def fetch() -> dict[str, Any]:
                return {key: found}

            await show(fetch, lambda v: draw(v[key]), output, watch=False, title="")
        return EXIT_OK

    finish(main())


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
    from swarm.client import webhooks
    from swarm.client.commands import issue

    wanted = list(event_ids or [])

    async def main() -> int:
        if bool(wanted) == all_dead:
            raise CliError("give event ids or --all-dead (not both)", code=EXIT_USAGE)
        target, settings = connect.locate(nats_url)
        async with connect.session(target, settings, streams=_command_streams()) as log:
            try:
                plan = await webhooks.plan_redelivery(
                    log,
                    event_ids=wanted,
                    all_dead=all_dead,
                    subscription=subscription,
                    identity=settings.identity,
                    source=publish.CLI_SOURCE,
                )
            except webhooks.NotDeadLettered as exc:
                raise CliError(
                    exc.message,
                    code=exc.code,
                    hint="`swarm webhook deliveries --dead` lists the dead letters",
                ) from None
            if not plan:
                if output == Format.TABLE:
                    stdout_console().print(Text("no dead letters to redeliver"))
                else:
                    emit({"requests": []}, output)
                return EXIT_OK
            documents = []
            for request in plan:
                issued = await issue(log, request.command, within=timeout)
                documents.append(publish.outcome_document(issued.outcome))
                if not issued.accepted:
                    raise rejection(
                        issued.outcome,
                        what=f"redelivering to {request.webhook_id}",
                        namespace="default",
                    )
                if output == Format.TABLE:
                    stdout_console().print(
                        Text(
                            f"webhook {request.webhook_id}: {len(request.event_ids)} dead "
                            "letter(s) queued for redelivery"
                        )
                    )
        if output != Format.TABLE:
            emit({"requests": documents}, output)
        return EXIT_OK

    finish(main())
