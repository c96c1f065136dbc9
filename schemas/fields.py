"""One thing wrong with one field: the one field-error type of Swarm.

Decoding a command or an event reports its problems with it (`schemas.registry.DecodeError`),
the client validates with it and reads a rejection's errors into it (`swarm.client.errors`), and
both front ends show it (the CLI's table, the HTTP API's problem document). The wire forms are
`schemas.outcomes.FieldErrorModel` (in `command.rejected`) and the API's problem `errors`.

Standard library only: the CLI imports it at its start, through `swarm.client.errors`, so it
must not build pydantic models.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    """One thing wrong with one field, addressed by a dotted path (`data.replicas`)."""

    loc: str
    msg: str
    type: str

    def as_dict(self) -> dict[str, str]:
        return {"loc": self.loc, "msg": self.msg, "type": self.type}


__all__ = ["FieldError"]
