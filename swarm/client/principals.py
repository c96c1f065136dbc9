"""The principals of a `swarm up` stack as a front end reads them: who may sign what, and
which API token is whose.

`load` reads a principals listing (`LISTING`, in the stack's principals directory): the CLI
checks that an agent's answer is signed by one of the stack's pods. `Roster` (the listing, read
again whenever it changes) and `TokenBook` (the users' API tokens, `TOKENS` beside the listing)
are how the HTTP API tells which user a bearer token is and signs as that user (`USER` is the
users' role).

The dev stack writes these files (`swarm.devstack.principals`, `.apitokens`; `swarm user`
manages them); reading them is named here so that the front ends import the client alone, and
the HTTP API does not import the dev stack.
"""

from __future__ import annotations

from swarm.devstack.apitokens import TOKENS, TokenBook
from swarm.devstack.principals import LISTING, USER, Principal, Roster, load

__all__ = ["LISTING", "TOKENS", "USER", "Principal", "Roster", "TokenBook", "load"]
