"""`swarm timeline …` run in a worker thread on a CLI that has only the timeline verbs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import typer
from typer.testing import CliRunner, Result

from swarm.cli import timeline
from tests.helpers.partial_cli import cli_with


def timeline_cli() -> typer.Typer:
    return cli_with(timeline.register)


async def invoke_timeline(args: Sequence[str], nats_url: str) -> Result:
    """`swarm timeline ARGS --nats-url URL` in a thread, so its event loop does not meet the
    test's."""
    argv = ["timeline", *args, "--nats-url", nats_url]
    return await asyncio.to_thread(CliRunner().invoke, timeline_cli(), argv)
