"""`swarm agent quarantine|release`: take an agent out of traffic by hand, and give it back.

The Hive quarantines agents on its own when its healing policy says so (swarm/domain/heal.py);
these verbs send the same commands, so a person's decision is on the log with its reason too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

import typer

from swarm.cli import connect
from swarm.cli.output import EXIT_OK, Format
from swarm.cli.verbs import EXIT_CODES, OutputOption, TimeoutOption, conclude, finish

if TYPE_CHECKING:
    from swarm.client.commands import Issued
    from swarm.client.swarm import Swarm

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
    ns = namespace or DEFAULT_NAMESPACE
    _send(
        lambda swarm: swarm.agents.quarantine(ns, name, reason=reason),
        name,
        ns,
        "quarantined",
        timeout,
        output,
        nats_url,
    )


def release(
    name: NameArgument,
    reason: ReasonOption = "released by request",
    namespace: NamespaceOption = None,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """End the agent's quarantine: it gets messages again."""
    ns = namespace or DEFAULT_NAMESPACE
    _send(
        lambda swarm: swarm.agents.release(ns, name, reason=reason),
        name,
        ns,
        "released",
        timeout,
        output,
        nats_url,
    )


def _send(
    verb: Callable[[Swarm], Awaitable[Issued]],
    name: str,
    ns: str,
    done: str,
    timeout: float,
    output: Format,
    nats_url: str | None,
) -> None:
    from schemas import names

    async def main() -> int:
        settings = connect.load_settings()
        streams = (names.STREAM_COMMANDS, names.STREAM_EVENTS)
        async with connect.client(nats_url, settings, streams=streams, timeout=timeout) as swarm:
            issued = await verb(swarm)
        conclude(
            issued,
            output,
            what=f"agent {ns}/{name}",
            done=f"agent {ns}/{name} {done}",
            namespace=ns,
        )
        return EXIT_OK

    finish(main())
