"""Who asks a query: a service that answers `swarm.query.…` (the Hive, the scheduler's market)
and is given the stack's principals takes a query as its signer's, or answers
`unauthenticated: …` and nothing else.

A query counts as asked by a principal when

* it is signed (`swarm.kernel.signing.query_signature_of`: headers naming the signer and the
  time of signing, a signature over those, the subject and the body) by a principal of the
  stack, and the signature holds;
* it was signed within `signing.FRESH_S` of the answerer's clock, the window a mesh message
  has (runtime/meshguard.py);
* its reply subject is under the signer's own inbox prefix (`names.inbox_prefix`), where the
  stack's NATS lets that principal alone listen (`swarm.devstack.principals.permissions`). So
  a signed query read off the wire and sent again with another reply subject is refused, and
  one sent again as it was, within the window, is answered to its signer alone.

What the principal may then read is the answerer's business, by the domain's rule
(`swarm.domain.policy.Reader`); a read beyond it is answered `forbidden: …` (`forbidden`).
Without a listing (a stack whose NATS admits anyone, most
tests) there is no guard: every query is answered, as the Hive then checks no command's
signature either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from schemas import names
from swarm.kernel.signing import FRESH_S, query_signature_of, signer_of

if TYPE_CHECKING:
    from swarm.kernel.eventlog import Message


class Asker(Protocol):
    """A principal, as the stack's listing names it (`swarm.devstack.principals.Principal`)."""

    @property
    def name(self) -> str: ...

    @property
    def role(self) -> str: ...


class Principals(Protocol):
    """The stack's principals by public key (`swarm.devstack.principals.Roster`)."""

    def get(self, public_key: str) -> Asker | None: ...


class QueryGuard:
    def __init__(
        self,
        principals: Principals,
        *,
        window_s: float = FRESH_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.principals = principals
        self.window_ms = window_s * 1000
        self.clock = clock

    def asker(self, msg: Message) -> Asker | str:
        """The principal that asked `msg`, or why it counts as nobody's (`unauthenticated: …`).
        The checks that cost nothing come first: a stranger's or a stale query is refused
        before the signature's arithmetic."""
        signature = query_signature_of(msg.subject, msg.data, msg.headers, verify=False)
        if signature is None:
            return (
                "unauthenticated: the query is not signed; this stack answers queries signed by "
                "one of its principals (Swarm's clients sign with $SWARM_NATS_CREDENTIALS)"
            )
        principal = signer_of(
            signature, self.principals.get, self, what="query", taker="this stack"
        )
        if isinstance(principal, str):
            return principal
        # A principal of the listing: its key is a valid token.
        own = names.inbox_prefix(signature.signer)
        if not msg.reply.startswith(f"{own}."):
            return (
                f"unauthenticated: the query is signed by {principal.name} but its answer "
                f"would go to {_printable(msg.reply) if msg.reply else 'no one'}, not under "
                f"{principal.name}'s own inbox prefix {own}: a query is answered to its "
                "signer alone (connect with that inbox prefix, as Swarm's clients do)"
            )
        checked = query_signature_of(msg.subject, msg.data, msg.headers)
        if checked is None or not checked.valid:
            problem = checked.problem if checked is not None else "it is gone"
            return f"unauthenticated: the query's signature does not hold: {problem}"
        return principal


def unauthenticated(reason: str) -> dict[str, str]:
    """The answer to a query that counts as nobody's (`reason`: what `QueryGuard.asker` said)."""
    return {"error": reason, "code": "unauthenticated"}


def forbidden(reason: str) -> dict[str, str]:
    """The answer to a principal's query for what its role does not let it read (`reason`:
    `swarm.domain.policy.Reader.refusal`'s)."""
    return {"error": f"forbidden: {reason}", "code": "forbidden"}


def _printable(value: str, limit: int = 60) -> str:
    return repr(value[:limit])


__all__ = ["Asker", "Principals", "QueryGuard", "forbidden", "unauthenticated"]
