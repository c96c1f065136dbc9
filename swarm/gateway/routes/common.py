"""Parameters and dependencies the routes share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Concatenate, ParamSpec

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.types import DecoratedCallable

from swarm.client.commands import Issued
from swarm.client.swarm import Agents, Swarm
from swarm.gateway.auth import require_token
from swarm.gateway.models import NAME_PATTERN, CommandResult
from swarm.gateway.problems import ProblemError, responses
from swarm.gateway.service import Gateway

#: Problems every authenticated route may answer with.
COMMON_PROBLEMS = responses(400, 401, 413, 422, 500, 503)
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
AUTHENTICATED = [Depends(require_token)]
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
    OpenAPI document says so the same way for every command route."""
    return route(path, response_model=CommandResult, responses=COMMAND_PROBLEMS, **details)


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
    """What a command route is given besides its own fields: the client to call, how long to
    wait for the outcome (`?wait`, `?timeout`), and how to answer what the verb returns."""

    def __init__(
        self,
        gw: GatewayDep,
        request: Request,
        wait: WaitQuery = True,
        timeout: TimeoutQuery = None,
    ) -> None:
        self.gw = gw
        self.request = request
        self.swarm: Swarm = gw.swarm
        #: The verb's timeout: 0 sends without waiting.
        self.timeout = gw.timeout(wait, timeout)

    async def answer(self, command: Awaitable[Issued], *, what: str) -> JSONResponse:
        return await self.gw.answer(self.request, command, what=what)


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
