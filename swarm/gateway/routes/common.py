"""Parameters and dependencies the routes share, and whom a request acts for.

Every `/v1` route needs a token (`authorized`, after the guard has found the caller: see
`swarm.gateway.auth`) and acts through its caller's client (`ActingDep`). A user's token is
held to the user's roles (`swarm.gateway.access`): a route that judges that itself is marked
`judged` (every command route is: the Hive judges commands); any other needs a role in every
namespace for a user, so a route added without a thought for users fails closed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Concatenate, ParamSpec

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.types import DecoratedCallable

from swarm.client.commands import Issued, Sent
from swarm.client.swarm import Agents, Swarm
from swarm.client.webhooks import NewWebhook
from swarm.gateway.access import Acting
from swarm.gateway.auth import Authenticator, Caller, bearer
from swarm.gateway.models import NAME_PATTERN, CommandResult
from swarm.gateway.problems import ProblemError, responses
from swarm.gateway.service import Gateway

#: Problems every authenticated route may answer with.
COMMON_PROBLEMS = responses(400, 401, 403, 413, 422, 500, 503)
#: What a command route may answer besides its outcome and the common problems.
COMMAND_PROBLEMS: dict[int | str, dict[str, Any]] = {
    202: {
        "model": CommandResult,
        "description": (
            "Sent with `?wait=false`, or no outcome within the timeout: pending; poll the "
            "`Location` for the outcome."
        ),
    },
    **responses(404, 409),
}
#: The routes that hold a user's token to its roles themselves (`judged`).
_JUDGED: set[Callable[..., Any]] = set()


def judged(endpoint: DecoratedCallable) -> DecoratedCallable:
    """Mark a route as judging a user's access itself (below its router's decorator): without
    the mark, a user's token needs a role in every namespace to use it."""
    _JUDGED.add(endpoint)
    return endpoint


def caller_of(request: Request) -> Caller:
    """Whom the request acts for: as the guard found it, or found now (a route declared
    authenticated is so wherever it is mounted)."""
    found = request.scope.get("user")
    if isinstance(found, Caller):
        return found
    authenticator: Authenticator = request.app.state.authenticator
    caller = authenticator.caller(request.headers.get("authorization"))
    if isinstance(caller, ProblemError):
        raise caller
    request.scope["user"] = caller
    return caller


async def authorized(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """A token of the API, and for a user's on a route that does not judge access itself, a
    role in every namespace (see the module)."""
    caller = caller_of(request)
    if caller.user is not None and request.scope.get("endpoint") not in _JUDGED:
        acting = await acting_of(request)
        await acting.require(None, f"use {request.method} {request.url.path}")


AUTHENTICATED = [Depends(authorized)]
#: Where the routes on one agent live.
AGENT_PATH = "/namespaces/{namespace}/agents/{name}"

Verb = ParamSpec("Verb")


def v1_router(*tags: str, under: str = "") -> APIRouter:
    """A router of the API's `/v1` routes (below `/v1{under}`): each needs the bearer token and
    may answer with the common problems."""
    return APIRouter(
        prefix="/v1" + under, tags=list(tags), dependencies=AUTHENTICATED, responses=COMMON_PROBLEMS
    )


def command_route(
    route: Callable[..., Callable[[DecoratedCallable], DecoratedCallable]],
    path: str,
    **details: Any,
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """`route` (a router's `post`, `put`, `patch` or `delete`) at `path` as a command route: it
    answers the command's outcome as a `CommandResult`, or 202 pending, or a problem, and the
    OpenAPI document says so the same way for every command route. The Hive judges whether a
    user may send the command (`judged`)."""
    register = route(path, response_model=CommandResult, responses=COMMAND_PROBLEMS, **details)

    def decorate(endpoint: DecoratedCallable) -> DecoratedCallable:
        return register(judged(endpoint))

    return decorate


def read_route(
    route: Callable[..., Callable[[DecoratedCallable], DecoratedCallable]],
    path: str,
    model: type[Any],
    **details: Any,
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """`route` (a router's `get`) at `path` as a read of one thing its path names: it answers
    `model`, or a 404 problem when there is no such thing."""
    return route(path, response_model=model, responses=responses(404), **details)


def gateway(request: Request) -> Gateway:
    found: Gateway | None = getattr(request.app.state, "gateway", None)
    if found is None or not found.log.is_connected:
        raise ProblemError(503, "unavailable", "Swarm unavailable", "the API is not connected")
    return found


GatewayDep = Annotated[Gateway, Depends(gateway)]


async def acting_of(request: Request) -> Acting:
    """What the request acts through (its caller's client), made once per request."""
    found = getattr(request.state, "acting", None)
    if isinstance(found, Acting):
        return found
    acting = await gateway(request).acting(caller_of(request))
    request.state.acting = acting
    return acting


ActingDep = Annotated[Acting, Depends(acting_of)]
NamespacePath = Annotated[
    str, Path(pattern=NAME_PATTERN, max_length=52, description="The namespace.")
]
NamePath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=52, description="The agent.")]
WaitQuery = Annotated[
    bool,
    Query(
        description=(
            "Wait for the command's outcome (200, or a problem if rejected); false answers 202 "
            "with a Location to poll."
        )
    ),
]
TimeoutQuery = Annotated[
    float | None,
    Query(gt=0, le=300, description="Seconds to wait for the outcome (default: the API's)."),
]


class CommandCall:
    """What a command route is given besides its own fields: the client to call (the caller's,
    so the command is signed by and sent as whom the request acts for), how long to wait for
    the outcome (`?wait`, `?timeout`), and how to answer what the verb returns."""

    def __init__(
        self,
        gw: GatewayDep,
        acting: ActingDep,
        request: Request,
        wait: WaitQuery = True,
        timeout: TimeoutQuery = None,
    ) -> None:
        self.gw = gw
        self.acting = acting
        self.request = request
        self.swarm: Swarm = acting.swarm
        #: The verb's timeout: 0 sends without waiting.
        self.timeout = gw.timeout(wait, timeout)
        self._wait = wait
        self._asked_timeout = timeout

    async def answer(self, command: Awaitable[Issued], *, what: str) -> JSONResponse:
        return await self.gw.answer(self.request, self.acting.caller, command, what=what)

    async def send(
        self, event: Mapping[str, Any], *, new_webhook: NewWebhook | None = None
    ) -> tuple[Sent, Issued | None]:
        """Send a whole command (`Gateway.send`) as the caller, waiting as the query says; for a
        route that answers the outcome itself."""
        return await self.gw.send(
            self.acting,
            event,
            wait=self._wait,
            timeout=self._asked_timeout,
            new_webhook=new_webhook,
        )


CommandDep = Annotated[CommandCall, Depends()]


class AgentRef:
    """The agent a route below `AGENT_PATH` names."""

    def __init__(self, namespace: NamespacePath, name: NamePath) -> None:
        self.namespace = namespace
        self.name = name

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


AgentDep = Annotated[AgentRef, Depends()]


class AgentCall:
    """What a command route on one agent (below `AGENT_PATH`) is given: the command call, and
    the agent its path names."""

    # The call is taken before the agent, so a request's problems are listed in the order they
    # were when each route took the call and the path apart: the query's, then the path's.
    def __init__(self, call: CommandDep, agent: AgentDep) -> None:
        self.agents: Agents = call.swarm.agents
        self.timeout = call.timeout
        self._call = call
        self._agent = agent

    async def answer(
        self,
        verb: Callable[Concatenate[str, str, Verb], Awaitable[Issued]],
        *args: Verb.args,
        **kwargs: Verb.kwargs,
    ) -> JSONResponse:
        """The outcome of the client's `verb` (a method of `Swarm.agents`) on this agent.

        A problem names the command by the verb's own name ("stop of default/echo"): the client's
        verbs are named for their commands, so no route spells the name out again.
        """
        agent = self._agent
        sent = verb(agent.namespace, agent.name, *args, **kwargs)
        return await self._call.answer(sent, what=f"{verb.__name__} of {agent}")


AgentCallDep = Annotated[AgentCall, Depends()]
