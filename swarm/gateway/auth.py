"""Bearer-token authentication for `/v1`: one shared token, compared in constant time.

The check (`refusal`) runs in the request guard (`swarm.gateway.guard`) before anything reads
the request's body; the `require_token` dependency declares the scheme in the OpenAPI document
and checks again, so a route declared authenticated is so wherever it is mounted.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from swarm.gateway.problems import ProblemError

#: Declares the `bearer` security scheme in the OpenAPI document; errors are raised below, in
#: the problem shape, rather than by FastAPI.
bearer = HTTPBearer(auto_error=False, description="The token `swarm up` writes to the data dir.")

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="swarm"'}


def refusal(authorization: str | None, expected: str) -> ProblemError | None:
    """Why a request with this `Authorization` header may not pass (a 401 problem); None when
    it carries `expected`. Reads the header as `HTTPBearer` does."""
    scheme, credentials = get_authorization_scheme_param(authorization)
    if not (authorization and scheme.lower() == "bearer" and credentials):
        return ProblemError(
            401,
            "unauthorized",
            "Unauthorized",
            "send the API token as `Authorization: Bearer <token>`",
            headers=_CHALLENGE,
        )
    if not hmac.compare_digest(credentials.encode(), expected.encode()):
        return ProblemError(
            401,
            "unauthorized",
            "Unauthorized",
            "the bearer token is not this API's token",
            headers={"WWW-Authenticate": 'Bearer realm="swarm", error="invalid_token"'},
        )
    return None


async def require_token(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    refused = refusal(request.headers.get("authorization"), request.app.state.token)
    if refused is not None:
        raise refused
