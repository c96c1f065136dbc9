"""Bearer tokens for `/v1`: which token a request carries, and so for whom it acts (`Caller`).

Two kinds of token are taken:

* **The API's own** (`SWARM_API_TOKEN`, or the file `SWARM_API_TOKEN_FILE` names: `swarm up`
  writes `<data dir>/api-token`), the owner's: compared in constant time. Its requests act as
  the API itself: identity `SWARM_API_IDENTITY`, commands signed with the API's own key (a
  `gateway` principal, which may act as any `user:` and is held to no role).
* **A user's** (`swarm user token NAME`; `swarm.devstack.apitokens`), when the API is given the
  stack's principals (`SWARM_API_PRINCIPALS_FILE`, which `swarm up` sets): found by its sha256
  in `api-tokens.json` beside that listing, and taken only while its user is still in the
  listing. Its requests act as that user: `user:<name>`, commands signed with the user's own key
  (its seed beside the listing), so the Hive applies the user's roles; reads are limited to the
  user's namespaces (`swarm.gateway.routes.common`). Both files are read again when they change,
  so a token issued, replaced or revoked, and a user removed, count at the next request.

Anything else (no token, another scheme, a token never issued, replaced, revoked, or of a user
removed) is a `401` with `WWW-Authenticate: Bearer`, the same answer whatever the reason, so a
guess learns nothing of which tokens once existed.

The check (`Authenticator.caller`) runs in the request guard (`swarm.gateway.guard`) before
anything reads the request's body; the `bearer` dependency declares the scheme in the OpenAPI
document.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from swarm.client.principals import TOKENS, USER, Roster, TokenBook
from swarm.client.signing import CommandSigner
from swarm.gateway.problems import ProblemError

#: Declares the `bearer` security scheme in the OpenAPI document; errors are raised below, in
#: the problem shape, rather than by FastAPI.
bearer = HTTPBearer(
    auto_error=False,
    description=(
        "The token `swarm up` writes to the data dir (the owner's), or a user's "
        "(`swarm user token NAME`, `swarm_…`)."
    ),
)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="swarm"'}
_INVALID = {"WWW-Authenticate": 'Bearer realm="swarm", error="invalid_token"'}


@dataclass(frozen=True, slots=True)
class Caller:
    """Whom a request acts for: the owner (the API's own token), or a user."""

    #: The user's name; None for the owner's token.
    user: str | None = None
    #: The user's public key, and what signs its commands.
    public_key: str = ""
    signer: CommandSigner | None = None

    def __str__(self) -> str:
        return f"user {self.user}" if self.user is not None else "the API's owner"


OWNER = Caller()


class Authenticator:
    """Finds the caller a request's `Authorization` header names (see the module)."""

    def __init__(self, token: str, principals_file: Path | None = None) -> None:
        self._token = token.encode()
        #: The stack's principals and the users' tokens beside them; None: owner's token only.
        self._roster = Roster(principals_file) if principals_file is not None else None
        self._book = (
            TokenBook(principals_file.parent / TOKENS) if principals_file is not None else None
        )
        #: Users' signers by public key: a seed is read once per key (a rotated key is another).
        self._signers: dict[str, CommandSigner] = {}

    def caller(self, authorization: str | None) -> Caller | ProblemError:
        """The caller of a request with this `Authorization` header, or why it may not pass (a
        401 problem). Reads the header as `HTTPBearer` does."""
        scheme, credentials = get_authorization_scheme_param(authorization)
        if not (authorization and scheme.lower() == "bearer" and credentials):
            return ProblemError(
                401,
                "unauthorized",
                "Unauthorized",
                "send an API token as `Authorization: Bearer <token>`",
                headers=_CHALLENGE,
            )
        if hmac.compare_digest(credentials.encode(), self._token):
            return OWNER
        try:
            user = self._user(credentials)
        except ProblemError as exc:
            return exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # The principals or the tokens cannot be read (a file broken by hand): nobody's
            # token is taken then, and the API says why rather than failing.
            return ProblemError(
                503, "unavailable", "Swarm unavailable", f"the API cannot read its users: {exc}"
            )
        if user is None:
            return ProblemError(
                401,
                "unauthorized",
                "Unauthorized",
                "the bearer token is not a token of this API",
                headers=_INVALID,
            )
        return user

    def _user(self, token: str) -> Caller | None:
        if self._book is None or self._roster is None:
            return None
        name = self._book.holder(token)
        if name is None:
            return None
        principal = self._roster.named(name)
        if principal is None or principal.role != USER:
            return None  # removed since the token was issued
        signer = self._signers.get(principal.public_key)
        if signer is None:
            signer = CommandSigner.from_seed_file(principal.seed_file)
            if signer.public_key != principal.public_key:
                # Read between `swarm user rotate` writing the new seed and the listing.
                raise ProblemError(
                    503,
                    "unavailable",
                    "Swarm unavailable",
                    f"user {name}'s key is being replaced; try again",
                )
            self._signers[principal.public_key] = signer
        return Caller(name, principal.public_key, signer)


__all__ = ["OWNER", "Authenticator", "Caller", "bearer"]
