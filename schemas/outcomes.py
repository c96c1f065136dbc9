"""Outcome events: every command gets exactly one, accepted or rejected.

A rejection may quote what the sender sent (a reason naming its values, field errors, the
attributes of a message that did not parse), so each part is bounded: an answer to any input
stays a small event that decodes again.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field

from schemas import names
from schemas.envelope import Payload
from schemas.registry import REGISTRY
from schemas.specs import MAX_INT64, MAX_TYPE_CHARS, cut_to

#: Length of a rejection's reason and of one field error's message. Generous, because `decide`
#: quotes values of a valid command in them (a webhook URL of up to 2,048 characters, printed
#: with repr and in urlsplit's complaint about it); longer text is cut, never refused (an
#: agent's list of versions, quoted when a rollback names none of them, has no bound).
MAX_OUTCOME_TEXT = 65_536
#: Field errors one rejection lists (the decoder reports at most `MAX_DECODE_ERRORS` + 1).
MAX_FIELD_ERRORS = 64
#: Events one command causes: one atomic append holds at most 1000 messages, outcome included.
MAX_CAUSED_EVENTS = 1000
#: What a rejection of an unparsable message may say it received: a few named scalars. Strings
#: are as long as a NATS subject can be (the server's 4 KiB control line bounds it).
MAX_RECEIVED = 32
MAX_RECEIVED_TEXT = 4096

CommandId = Annotated[str, Field(max_length=64)]
EventId = Annotated[str, Field(max_length=64)]
CommandType = Annotated[str, Field(max_length=MAX_TYPE_CHARS)]
OutcomeText = Annotated[
    str, BeforeValidator(cut_to(MAX_OUTCOME_TEXT)), Field(max_length=MAX_OUTCOME_TEXT)
]
ReceivedKey = Annotated[str, Field(max_length=64)]
ReceivedValue = (
    Annotated[str, Field(max_length=MAX_RECEIVED_TEXT)]
    | Annotated[int, Field(ge=-MAX_INT64 - 1, le=MAX_INT64)]
)


class FieldErrorModel(Payload):
    """One field-level problem with a rejected command."""

    loc: Annotated[str, BeforeValidator(cut_to(1024)), Field(max_length=1024)]
    msg: OutcomeText
    type: str = Field(max_length=64)


class _Answer(Payload):
    """What every outcome says about the command it answers."""

    command_id: CommandId
    #: Where the command sits in SWARM_COMMANDS and the sha256 of its bytes: a second, different
    #: body sent under an id that was already answered is told apart from a redelivery of the
    #: first (None on outcomes written before they were recorded).
    command_seq: int | None = Field(default=None, ge=1, le=MAX_INT64)
    command_digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


@REGISTRY.event(names.OUTCOME_AGGREGATE, names.OUTCOME_ACCEPTED)
class CommandAccepted(_Answer):
    """The command was decided and its events are on the log."""

    command_type: CommandType
    #: Ids of the events the command caused, in log order (written atomically with this one).
    events: list[EventId] = Field(default_factory=list, max_length=MAX_CAUSED_EVENTS)
    #: The sha256 of each of those events as the Hive wrote them (of their JSON, canonical:
    #: `swarm.kernel.seal.entry_digest`), in the same order: the sealed outcome vouches for
    #: them, so an event changed or removed later shows (`swarm timeline verify`). Empty in
    #: outcomes written before Swarm kept them.
    digests: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(
        default_factory=list, max_length=MAX_CAUSED_EVENTS
    )


@REGISTRY.event(names.OUTCOME_AGGREGATE, names.OUTCOME_REJECTED)
class CommandRejected(_Answer):
    """The command was not carried out; nothing else was written for it."""

    command_type: CommandType | None = None
    reason: OutcomeText
    #: Field-level problems, for commands that failed validation.
    errors: list[FieldErrorModel] = Field(default_factory=list, max_length=MAX_FIELD_ERRORS)
    #: The rule that refused it (policy, quota, state), when one did.
    rule: str | None = Field(default=None, max_length=64)
    #: What could be read of a command that did not parse (id, type, source, ...): scalars only,
    #: since it echoes whatever a sender sent.
    received: dict[ReceivedKey, ReceivedValue] = Field(
        default_factory=dict, max_length=MAX_RECEIVED
    )
