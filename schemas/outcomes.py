"""Outcome events: every command gets exactly one, accepted or rejected."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from schemas import names
from schemas.envelope import Payload
from schemas.registry import REGISTRY


class FieldErrorModel(Payload):
    """One field-level problem with a rejected command."""

    loc: str
    msg: str
    type: str


class _Answer(Payload):
    """What every outcome says about the command it answers."""

    command_id: str
    #: Where the command sits in SWARM_COMMANDS and the sha256 of its bytes: a second, different
    #: body sent under an id that was already answered is told apart from a redelivery of the
    #: first (None on outcomes written before they were recorded).
    command_seq: int | None = Field(default=None, ge=1)
    command_digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


@REGISTRY.event(names.OUTCOME_AGGREGATE, names.OUTCOME_ACCEPTED)
class CommandAccepted(_Answer):
    """The command was decided and its events are on the log."""

    command_type: str
    #: Ids of the events the command caused, in log order (written atomically with this one).
    events: list[str] = Field(default_factory=list)


@REGISTRY.event(names.OUTCOME_AGGREGATE, names.OUTCOME_REJECTED)
class CommandRejected(_Answer):
    """The command was not carried out; nothing else was written for it."""

    command_type: str | None = None
    reason: str
    #: Field-level problems, for commands that failed validation.
    errors: list[FieldErrorModel] = Field(default_factory=list)
    #: The rule that refused it (policy, quota, state), when one did.
    rule: str | None = None
    #: What could be read of a command that did not parse (id, type, source, ...).
    received: dict[str, Any] = Field(default_factory=dict)
