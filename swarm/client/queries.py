"""A small client for the Hive's read-only queries (`swarm.query.…`, core NATS request/reply).

Any Hive replica may answer, and each answers from the state it has folded so far, which can be
a little behind the log. Every answer carries the replica's `applied_seq`, so a caller that knows
which log position its answer must reflect (the outcome of a command it just sent, or the end of
the log when the read began) passes it as `at_least`, and the query is asked again for a moment
until a replica has caught up. That keeps `deploy` followed by `ls` showing the new agent.

A stack whose Hive knows its principals answers a query as its signer's (the log client signs
it with its credentials: `swarm.kernel.eventlog.EventLog.request`), and shows a user the
namespaces where it holds a role: a read beyond them is a `QueryFailed` with `error_code`
"forbidden" (its message says which role it takes, and the `swarm user grant` that gives it),
an unsigned query one with "unauthenticated". Both are FAILED, as a command the Hive refused
for its sender's role is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from schemas import names
from swarm.client.errors import FAILED, UNAVAILABLE, ClientError
from swarm.kernel.eventlog import EventLog, NoResponders, RequestTimeout

if TYPE_CHECKING:
    # Imported where used: building the view models is most of a CLI verb's start-up.
    from schemas.views import AgentDetailView, AgentView, GrantView, NamespaceView, PodView, View

__all__ = [
    "CATCH_UP",
    "QUERY_TIMEOUT",
    "HiveQueries",
    "QueryFailed",
    "parse_views",
    "read_floor",
    "request_object",
]

V = TypeVar("V", bound="View")

#: How long one replica may take to answer one query.
QUERY_TIMEOUT = 2.0
#: How long a read waits for a replica to catch up before showing what it has (with a note).
CATCH_UP = 2.0
_FIRST_RETRY = 0.02
_MAX_RETRY = 0.25


async def read_floor(log: EventLog) -> int:
    """The log position a read must reflect: everything written before the read began (its
    `at_least`).

    Taken from the stream rather than remembered from a previous command, so a read in a new
    process still sees what the previous command (from any client) created.
    """
    return await log.last_sequence(names.STREAM_EVENTS)


class QueryFailed(ClientError):
    """The Hive answered with an error (`{"error", "code"}`), e.g. code "not_found"."""

    def __init__(self, message: str, *, error_code: str, hint: str | None = None) -> None:
        super().__init__(message, code=FAILED, hint=hint)
        self.error_code = error_code

    @classmethod
    def of(cls, answer: Mapping[str, Any]) -> QueryFailed:
        """The error an answer carries (`{"error", "code"}`), with what to do about it."""
        code = str(answer.get("code", "error"))
        return cls(str(answer.get("error")), error_code=code, hint=_ERROR_HINTS.get(code))


class HiveQueries:
    """Ask the Hive; every method returns the answer's payload or raises a `ClientError`.

    `on_stale` hears a note when an answer is given although its replica has not caught up.
    """

    def __init__(
        self,
        log: EventLog,
        *,
        timeout: float = QUERY_TIMEOUT,
        catch_up: float = CATCH_UP,
        on_stale: Callable[[str], None] | None = None,
    ) -> None:
        self.log = log
        self.timeout = timeout
        self.catch_up = catch_up
        self.on_stale = on_stale
        #: The log position the last answer reflected (its replica's `applied_seq`).
        self.applied_seq = 0

    async def ask(
        self, subject: str, body: Mapping[str, Any] | None = None, *, at_least: int = 0
    ) -> dict[str, Any]:
        """The answer to one query from a replica that has applied the log up to `at_least`.

        Error answers are retried the same way: a lagging replica says "not found" about an
        agent that was deployed a moment ago.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.catch_up
        delay = _FIRST_RETRY
        while True:
            answer = await request_object(
                self.log,
                subject,
                body or {},
                timeout=self.timeout,
                answerer="the Hive",
                unanswered=lambda why: _no_hive(subject, why),
            )
            applied = answer.get("applied_seq")
            behind = isinstance(applied, int) and applied < at_least
            if not behind or loop.time() >= deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY)
        if behind and self.on_stale is not None:
            self.on_stale(
                f"note: Hive replica {answer.get('node', '?')} has applied the log up to "
                f"#{applied}, not yet #{at_least}; this answer may be out of date"
            )
        if isinstance(applied, int):
            self.applied_seq = applied
        if answer.get("error") is not None:
            raise QueryFailed.of(answer)
        return answer

    # -- the queries ------------------------------------------------------------------------------

    async def agents(self, namespace: str | None, *, at_least: int = 0) -> list[dict[str, Any]]:
        """Agents (not deleted) of one namespace, or of all when `namespace` is None."""
        body = {} if namespace is None else {"namespace": namespace}
        answer = await self.ask(names.QUERY_AGENTS_LIST, body, at_least=at_least)
        return _list(answer, "agents")

    async def agent(self, namespace: str, name: str, *, at_least: int = 0) -> dict[str, Any]:
        """One agent in detail (spec without module bytes, replicas, versions)."""
        try:
            answer = await self.ask(
                names.QUERY_AGENTS_GET, {"namespace": namespace, "name": name}, at_least=at_least
            )
        except QueryFailed as exc:
            if exc.error_code != "not_found":
                raise
            raise QueryFailed(
                f"agent {namespace}/{name} not found",
                error_code=exc.error_code,
                hint=(
                    f"`swarm agent ls -n {namespace}` lists its agents, "
                    "`-A` those of all namespaces"
                ),
            ) from None
        return _object(answer, "agent")

    async def agent_by_id(self, agent_id: str, *, at_least: int = 0) -> dict[str, Any]:
        answer = await self.ask(names.QUERY_AGENTS_GET, {"agent_id": agent_id}, at_least=at_least)
        return _object(answer, "agent")

    async def pods(self, *, at_least: int = 0) -> list[dict[str, Any]]:
        return _list(await self.ask(names.QUERY_PODS_LIST, at_least=at_least), "pods")

    async def namespaces(self, *, at_least: int = 0) -> list[dict[str, Any]]:
        return _list(await self.ask(names.QUERY_NAMESPACES_LIST, at_least=at_least), "namespaces")

    # -- the same, typed (`schemas.views`) ----------------------------------------------------

    async def agent_views(self, namespace: str | None, *, at_least: int = 0) -> list[AgentView]:
        from schemas.views import AgentView

        return parse_views(AgentView, await self.agents(namespace, at_least=at_least))

    async def agent_detail(
        self, namespace: str, name: str, *, at_least: int = 0
    ) -> AgentDetailView:
        from schemas.views import AgentDetailView

        return parse_views(AgentDetailView, [await self.agent(namespace, name, at_least=at_least)])[
            0
        ]

    async def agent_detail_by_id(self, agent_id: str, *, at_least: int = 0) -> AgentDetailView:
        from schemas.views import AgentDetailView

        return parse_views(AgentDetailView, [await self.agent_by_id(agent_id, at_least=at_least)])[
            0
        ]

    async def pod_views(self, *, at_least: int = 0) -> list[PodView]:
        from schemas.views import PodView

        return parse_views(PodView, await self.pods(at_least=at_least))

    async def namespace_views(self, *, at_least: int = 0) -> list[NamespaceView]:
        from schemas.views import NamespaceView

        return parse_views(NamespaceView, await self.namespaces(at_least=at_least))

    async def grant_views(self, *, at_least: int = 0) -> list[GrantView]:
        from schemas.views import GrantView

        answer = await self.ask(names.QUERY_ACCESS_LIST, at_least=at_least)
        return parse_views(GrantView, _list(answer, "grants"))


async def request_object(
    log: EventLog,
    subject: str,
    body: Mapping[str, Any],
    *,
    timeout: float,
    answerer: str,
    unanswered: Callable[[str], ClientError],
) -> dict[str, Any]:
    """`answerer`'s answer to one request on `subject` (core NATS request/reply), a JSON object.

    Nobody subscribed, or no answer within `timeout`, is the error `unanswered(why)` returns; an
    answer that is not a JSON object is a FAILED error.
    """
    try:
        reply = await log.request(subject, json.dumps(body).encode(), timeout=timeout)
    except NoResponders:
        raise unanswered("nothing is subscribed") from None
    except RequestTimeout:
        raise unanswered(f"no answer within {timeout:g}s") from None
    try:
        answer = json.loads(reply.data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ClientError(f"{answerer}'s answer to {subject} is not a JSON object", code=FAILED)
    return answer


#: What to do about an error answer, by its code (a refusal by role says it in its message).
_ERROR_HINTS = {
    "unauthenticated": (
        "this stack answers its principals alone: connect with the nkey seed file `swarm user "
        "add` issued (SWARM_NATS_CREDENTIALS), which signs every query"
    ),
}


def _no_hive(subject: str, why: str) -> ClientError:
    return ClientError(
        f"no Hive answered {subject}: {why}",
        code=UNAVAILABLE,
        hint="is the Hive running? (`swarm status`)",
    )


def _list(answer: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    items = answer.get(key)
    if not isinstance(items, list):
        raise ClientError(f"the Hive's answer has no list {key!r}", code=FAILED)
    return [item for item in items if isinstance(item, dict)]


def _object(answer: Mapping[str, Any], key: str) -> dict[str, Any]:
    item = answer.get(key)
    if not isinstance(item, dict):
        raise ClientError(f"the Hive's answer has no object {key!r}", code=FAILED)
    return item


def parse_views(model: type[V], items: Sequence[Mapping[str, Any]]) -> list[V]:
    """The Hive's answers read as their views; an answer that is not one is a clear error
    (FAILED), never a traceback: a Hive newer or older than the client may answer.

    Public so that a reader holding the raw answer (the CLI prints it as it came with `-o json`)
    can read the same answer typed for its tables.
    """
    import pydantic

    try:
        return [model.model_validate(item) for item in items]
    except pydantic.ValidationError as exc:
        problem = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise ClientError(
            f"the Hive's answer is not a {model.__name__}: {where}: {problem['msg']}", code=FAILED
        ) from None
