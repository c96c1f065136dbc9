"""`swarm agent quarantine|release`: take an agent out of traffic by hand, and give it back.

The Hive quarantines agents on its own when its healing policy says so (swarm/domain/heal.py);
these verbs send the same commands, so a person's decision is on the log with its reason too.
"""

from __future__ import annotations

from typing import Annotated

import typer

from swarm.cli import connect
from swarm.cli.output import Format
from swarm.cli.verbs import (
    DEFAULT_NAMESPACE,
    EXIT_CODES,
    AgentNameArgument,
    AgentNamespaceOption,
    OutputOption,
    TimeoutOption,
    change,
)

ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept on the log).")]


def register(agent_app: typer.Typer) -> None:
    agent_app.command("quarantine", epilog=EXIT_CODES)(quarantine)
    agent_app.command("release", epilog=EXIT_CODES)(release)


def quarantine(
    name: AgentNameArgument,
    reason: ReasonOption = "quarantined by request",
    namespace: AgentNamespaceOption = None,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """Stop giving the agent messages: its pods refuse them with the reason; it keeps running."""
    ns = namespace or DEFAULT_NAMESPACE
    change(
        lambda swarm: swarm.agents.quarantine(ns, name, reason=reason),
        what=f"agent {ns}/{name}",
        done=f"agent {ns}/{name} quarantined",
        namespace=ns,
        timeout=timeout,
        output=output,
        nats_url=nats_url,
    )


def release(
    name: AgentNameArgument,
    reason: ReasonOption = "released by request",
    namespace: AgentNamespaceOption = None,
    timeout: TimeoutOption = 10.0,
    output: OutputOption = Format.TABLE,
    nats_url: connect.NatsUrlOption = None,
) -> None:
    """End the agent's quarantine: it gets messages again."""
    ns = namespace or DEFAULT_NAMESPACE
    change(
        lambda swarm: swarm.agents.release(ns, name, reason=reason),
        what=f"agent {ns}/{name}",
        done=f"agent {ns}/{name} released",
        namespace=ns,
        timeout=timeout,
        output=output,
        nats_url=nats_url,
    )
