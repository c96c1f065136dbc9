"""`swarm agent quarantine|release`: take an agent out of traffic by hand, and give it back.

The Hive quarantines agents on its own when its healing policy says so (swarm/domain/heal.py);
these verbs send the same commands, so a person's decision is on the log with its reason too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

import typer

from swarm.cli import connect
from swarm.cli.output import Format
from swarm.cli.verbs import (
    EXIT_CODES,
    AgentNameArgument,
    AgentNamespaceOption,
    OutputOption,
    TimeoutOption,
    change_agent,
)

if TYPE_CHECKING:
    from swarm.client.commands import Issued
    from swarm.client.swarm import Agents

ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept on the log).")]
#: Sends one healing command: (the client's agents, namespace, name, reason).
Send = Callable[["Agents", str, str, str], Awaitable["Issued"]]


def register(agent_app: typer.Typer) -> None:
    agent_app.command("quarantine", epilog=EXIT_CODES)(quarantine)
    agent_app.command("release", epilog=EXIT_CODES)(release)


def _by_hand(send: Send, *, reason_default: str, done: str, doc: str) -> Callable[..., None]:
    """A verb sending one healing command: quarantine and release take the same options and
    report alike, and differ only in the command, the default reason and the words."""

    def verb(
        name: AgentNameArgument,
        reason: ReasonOption = reason_default,
        namespace: AgentNamespaceOption = None,
        timeout: TimeoutOption = 10.0,
        output: OutputOption = Format.TABLE,
        nats_url: connect.NatsUrlOption = None,
    ) -> None:
        change_agent(
            name,
            namespace,
            lambda agents, ns: send(agents, ns, name, reason),
            command=None,
            done=done,
            timeout=timeout,
            output=output,
            nats_url=nats_url,
        )

    # typer shows the docstring as the verb's help.
    verb.__doc__ = doc
    return verb


quarantine = _by_hand(
    lambda agents, ns, name, reason: agents.quarantine(ns, name, reason=reason),
    reason_default="quarantined by request",
    done="quarantined",
    doc="Stop giving the agent messages: its pods refuse them with the reason; it keeps running.",
)
release = _by_hand(
    lambda agents, ns, name, reason: agents.release(ns, name, reason=reason),
    reason_default="released by request",
    done="released",
    doc="End the agent's quarantine: it gets messages again.",
)
