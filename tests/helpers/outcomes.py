"""A command's outcome event, as the Hive writes it (on the command's aggregate, caused by it), for
tests that write a history to a log by hand."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas import CommandAccepted, CommandRejected, Envelope, event


def accepted(
    cmd: Envelope[Any], *, events: Sequence[str] = (), source: str = "test"
) -> Envelope[CommandAccepted]:
    """`cmd` accepted, with the ids of the events it wrote."""
    answer = CommandAccepted(command_id=cmd.id, command_type=cmd.type, events=list(events))
    return event(answer, aggregate_id=cmd.id, source=source, cause=cmd)


def rejected(cmd: Envelope[Any], reason: str, *, source: str = "test") -> Envelope[CommandRejected]:
    """`cmd` rejected for `reason`."""
    answer = CommandRejected(command_id=cmd.id, command_type=cmd.type, reason=reason)
    return event(answer, aggregate_id=cmd.id, source=source, cause=cmd)
