"""Bearer-token authentication for `/v1`: one shared token, compared in constant time."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from swarm.gateway.problems import ProblemError

#: Declares the `bearer` security scheme in the OpenAPI document; errors are raised below, in
#: the problem shape, rather than by FastAPI.
bearer = HTTPBearer(auto_error=False, description="The token `swarm up` writes to the data dir.")

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="swarm"'}


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    expected: str = request.app.state.token
    if credentials is None:
        raise ProblemError(
            401,
            "unauthorized",
            "Unauthorized",
            "send the API token as `Authorization: Bearer <token>`",
            headers=_CHALLENGE,
        )
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise ProblemError(
            401,
            "unauthorized",
            "Unauthorized",
            "the bearer token is not this API's token",
            headers={"WWW-Authenticate": 'Bearer realm="swarm", error="invalid_token"'},
        )
