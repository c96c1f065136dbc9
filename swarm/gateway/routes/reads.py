"""Reads beyond the Hive's state queries, as `swarm market`, `swarm logs` and `swarm trace`.

A user's token reads an agent's logs in a namespace where the user holds a role; the market and
traces span every namespace (a role in every one: `swarm.gateway.access`)."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Query

from schemas import names
from swarm.client import market, trace
from swarm.client.errors import ClientError, FieldProblem
from swarm.client.eventlog import EventLogError, NotFound
from swarm.client.logs import agent_lines, shown_levels
from swarm.client.text import parse_time
from swarm.gateway.models import AgentLogs, LogLine, MarketState, Trace, TraceNode
from swarm.gateway.problems import ProblemError
from swarm.gateway.routes.common import (
    AGENT_PATH,
    ActingDep,
    AgentDep,
    GatewayDep,
    judged,
    read_route,
    v1_router,
)
from swarm.gateway.service import nats_unavailable

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

router = v1_router()

#: The levels of `swarm.client.logs.LOG_LEVELS`, spelled out for the OpenAPI document.
LevelName = Literal["debug", "info", "warn", "error"]


@router.get("/market", response_model=MarketState, tags=["scheduler"], summary="The market")
async def get_market(
    gw: GatewayDep,
    limit: Annotated[int, Query(ge=0, le=10_000, description="Recent clearings to return.")] = 20,
) -> MarketState:
    """The scheduler's offers (free capacity, posted price, energy cost per unit) and its latest
    clearings with the reason for each placement, preemption or wait. Answered by the running
    scheduler (503 when none answers); clearings are kept in its memory, not on the log."""
    return MarketState.model_validate(await market.ask_market(gw.log, limit))


@read_route(
    router.get, f"{AGENT_PATH}/logs", AgentLogs, tags=["agents"], summary="An agent's log lines"
)
@judged
async def get_agent_logs(
    gw: GatewayDep,
    acting: ActingDep,
    agent: AgentDep,
    level: Annotated[
        LevelName | None, Query(description="Lowest level returned (default: all).")
    ] = None,
    grep: Annotated[
        str | None, Query(max_length=500, description="Only lines whose message contains this.")
    ] = None,
    since: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Only lines from this time on: an age (30s, 10m, 2h) or RFC 3339.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="The most recent lines.")] = 200,
) -> AgentLogs:
    """The agent's most recent log lines (all its replicas), oldest first, as `swarm logs`.

    Lines are kept in the SWARM_LOGS stream as long as its limits allow; logging is lossy by
    design, so a busy agent may have lines missing.
    """
    await acting.require(agent.namespace, f"read namespace {agent.namespace}")
    start = None
    if since is not None:
        try:
            start = parse_time(since)
        except ClientError as exc:
            raise _invalid_query("since", exc) from None
        # Before the epoch is before any line; JetStream need not be asked to seek there.
        start = start if start > _EPOCH else None
    queries = await gw.swarm.queries()
    found = await queries.agent(agent.namespace, agent.name, at_least=await gw.swarm.floor())
    agent_id = str(found.get("agent_id"))
    kept: deque[dict[str, Any]] = deque(maxlen=limit)
    matched = 0
    if start is not None and start > datetime.now(UTC):
        # Nothing is logged in the future; and nats-server wraps a seek past the year 2262
        # (nanoseconds overflow) around to the start of the stream.
        return AgentLogs(agent_id=agent_id, lines=[], truncated=False)
    try:
        async for entry in agent_lines(
            gw.log, agent_id, levels=shown_levels(level), grep=grep, since=start
        ):
            kept.append(entry)
            matched += 1
    except NotFound:
        raise ProblemError(
            503, "unavailable", "Swarm unavailable", f"the {names.STREAM_LOGS} stream is missing"
        ) from None
    except (EventLogError, TimeoutError) as exc:
        raise nats_unavailable(exc) from None
    return AgentLogs(
        agent_id=agent_id,
        lines=[LogLine.model_validate(entry) for entry in kept],
        truncated=matched > len(kept),
    )


@read_route(
    router.get, "/traces/{trace_id}", Trace, tags=["traces"], summary="A command's causation tree"
)
async def get_trace(
    gw: GatewayDep,
    trace_id: Annotated[
        str,
        Path(
            pattern=names.TOKEN_PATTERN,
            max_length=64,
            description="A command id, or the id of an event it caused.",
        ),
    ],
    window: Annotated[
        float, Query(ge=1, le=3600, description="Seconds after the root command to follow.")
    ] = 300.0,
) -> Trace:
    """Everything one command set off (events, outcomes, the scheduler's proposals, the pods'
    reports) as trees with times from the command, as `swarm trace -o json`.

    An id that is not a command's may need a scan of the whole events stream to find.
    """
    try:
        roots = await trace.collect(gw.log, trace_id, window=window)
    except trace.TraceNotFound as exc:
        raise ProblemError(404, "not-found", "Not found", exc.message) from None
    except (EventLogError, TimeoutError) as exc:
        raise nats_unavailable(exc) from None
    root_time = roots[0].time if roots else None
    return Trace(
        id=trace_id,
        trace=[TraceNode.model_validate(root.as_json(root_time)) for root in roots],
    )


def _invalid_query(field: str, exc: ClientError) -> ProblemError:
    return ProblemError(
        422,
        "invalid-request",
        "Invalid request",
        exc.message,
        errors=[FieldProblem(f"query.{field}", exc.message, "value_error")],
    )
