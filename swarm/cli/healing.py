"""`swarm agent quarantine|release`: take an agent out of traffic by hand, and give it back.

The Hive quarantines agents on its own when its healing policy says so (swarm/domain/heal.py);
these verbs send the same commands, so a person's decision is on the log with its reason too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from swarm.cli import connect
from swarm.cli.output import EXIT_OK, Format
from swarm.cli.verbs import EXIT_CODES, OutputOption, TimeoutOption, conclude, finish, prepare

if TYPE_CHECKING:
    from schemas import Payload

DEFAULT_NAMESPACE = "default"
NameArgument = Annotated[str, typer.Argument(help="The agent's name.", show_default=False)]
NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace", "-n", help="The agent's namespace.", show_default=DEFAULT_NAMESPACE
    ),
]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept on the log).")]


def register(agent_app: typer.Typer) -> None:
    agent_app.command("quarantine", epilog=EXIT_CODES)(quarantine)
    agent_app.command("release", epilog=EXIT_CODES)(release)


def quarantine(
    name: NameArgument,
    reason: ReasonOption = "quarantined by request",
    namespace: NamespaceOption = None,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Stop giving the agent messages: its pods refuse them with the reason; it keeps running."""
    from schemas.healing import QuarantineAgent

    _send(QuarantineAgent, name, namespace, reason, "quarantined", timeout, output, nats_url)


def release(
    name: NameArgument,
    reason: ReasonOption = "released by request",
    namespace: NamespaceOption = None,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """End the agent's quarantine: it gets messages again."""
    from schemas.healing import ReleaseAgent

    _send(ReleaseAgent, name, namespace, reason, "released", timeout, output, nats_url)


def _send(
    payload: type[Payload],
    name: str,
    namespace: str | None,
    reason: str,
    done: str,
    timeout: float,
    output: Format,
    nats_url: str | None,
) -> None:
    from schemas import names
    from swarm.cli.queries import HiveQueries
    from swarm.client.commands import issue, read_floor

    ns = namespace or DEFAULT_NAMESPACE

    async def main() -> int:
        settings = connect.load_settings()
        target = connect.resolve_nats_url(nats_url, settings)
        streams = (names.STREAM_COMMANDS, names.STREAM_EVENTS)
        async with connect.session(target, settings, streams=streams) as log:
            agent = await HiveQueries(log).agent(ns, name, at_least=await read_floor(log))
            event = prepare(payload, {"agent_id": agent["agent_id"], "reason": reason}, settings)
            issued = await issue(log, event, within=timeout)
        conclude(
            issued,
            output,
            what=f"agent {ns}/{name}",
            done=f"agent {ns}/{name} {done}",
            namespace=ns,
        )
        return EXIT_OK

    finish(main())
