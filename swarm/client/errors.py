"""What can go wrong when a client sends a command or asks a query, as one exception type.

The CLI turns a `ClientError` into a message and an exit code, the HTTP API into a problem
document and a status; the `code` says which kind of failure it is so both can map it.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.fields import FieldError

#: The request was carried out and answered "no": a rejected command, a query's "not found".
FAILED = 1
#: The input was wrong; nothing was sent.
INVALID = 2
#: A command was sent but no outcome came back in time.
NO_OUTCOME = 3
#: NATS or the Hive could not be reached, or the Swarm streams are missing; nothing was sent.
UNAVAILABLE = 4


#: One field-level error (from local validation or a rejection): Swarm's one field-error type,
#: under the name the client has always given it.
FieldProblem = FieldError


class ClientError(Exception):
    """An error meant for whoever made the request: a message, an optional hint, a kind (`code`).

    The codes double as the CLI's exit codes (`swarm.cli.output.EXIT_*`).
    """

    def __init__(
        self,
        message: str,
        *,
        code: int = FAILED,
        hint: str | None = None,
        errors: Sequence[FieldProblem] = (),
    ) -> None:
        self.message = message
        self.code = code
        self.hint = hint
        self.errors = tuple(errors)
        super().__init__(message)
