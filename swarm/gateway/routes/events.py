"""The event log: a page of the timeline, and a live stream as server-sent events.

Both read `SWARM_EVENTS` directly, filtered by NATS subject (`swarm.evt.agent.<id>.>`); an
event's stream sequence is its position, its SSE `id`, and where a reconnecting client resumes
(`Last-Event-ID`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from fastapi import Header, Query
from fastapi.responses import StreamingResponse

from schemas import names
from swarm.client.commands import closing
from swarm.client.eventlog import Delivery, EventLog
from swarm.client.lifecycle import cancel_and_wait
from swarm.gateway.models import EventPage, LoggedEvent
from swarm.gateway.problems import ProblemError
from swarm.gateway.routes.common import GatewayDep, v1_router

router = v1_router("events")

#: Seconds between keep-alive comments on a quiet stream, so proxies keep the connection.
KEEPALIVE = 15.0
_FORBIDDEN = frozenset(" \t\r\n")
_EVENT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,256}$")
_SEQUENCE = re.compile(r"[0-9]{1,16}")
#: The highest stream sequence a request may name (JSON's exact integers).
MAX_SEQ = 2**53

SubjectQuery = Annotated[
    list[str] | None,
    Query(
        max_length=20,
        description=(
            "Only events on these subjects (NATS wildcards: `*` one token, `>` the rest), e.g. "
            "`swarm.evt.agent.>`; repeatable. Default: every event."
        ),
    ),
]


def check_subjects(subjects: Sequence[str] | None) -> list[str]:
    """The subject filters, each a valid NATS subject inside `SWARM_EVENTS`."""
    chosen = list(subjects or [f"{names.EVENTS_PREFIX}.>"])
    for subject in chosen:
        tokens = subject.split(".")
        valid = (
            len(subject) <= 256
            and tokens[: len(names.EVENTS_PREFIX.split("."))] == names.EVENTS_PREFIX.split(".")
            and len(tokens) > len(names.EVENTS_PREFIX.split("."))
            and all(t and not (_FORBIDDEN & set(t)) for t in tokens)
            and all(t == ">" or ">" not in t for t in tokens)
            and ">" not in tokens[:-1]
            and all(t == "*" or "*" not in t for t in tokens)
        )
        if not valid:
            raise ProblemError(
                422,
                "invalid-request",
                "Invalid request",
                f"subject {subject!r} is not a subject filter under {names.EVENTS_PREFIX}.>",
            )
    return chosen


@router.get("/events", response_model=EventPage)
async def list_events(
    gw: GatewayDep,
    subject: SubjectQuery = None,
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="Events after this sequence (0: from the start).")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most events in the page.")] = 100,
) -> EventPage:
    """A page of the event log, oldest first; `next_after` reads the next page."""
    subjects = check_subjects(subject)
    last = await gw.swarm.floor()
    found: list[LoggedEvent] = []
    if after < last:
        replay = gw.log.replay(
            names.STREAM_EVENTS,
            start_seq=after + 1,
            subjects=subjects,
            batch=limit,
            idle_timeout=0.25,
        )
        async with closing(replay) as deliveries:
            async for delivery in deliveries:
                found.append(LoggedEvent.of(delivery))
                if len(found) >= limit or delivery.stream_seq >= last:
                    break
    more = len(found) >= limit and found[-1].seq < last
    return EventPage(events=found, next_after=found[-1].seq if more else None, last_seq=last)


@router.get(
    "/events/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": (
                "Server-sent events: each `id` is the stream sequence, `event` the CloudEvent "
                "type, `data` the logged event (as in `GET /v1/events`)."
            ),
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def stream_events(
    gw: GatewayDep,
    subject: SubjectQuery = None,
    from_seq: Annotated[
        int | None,
        Query(ge=1, le=MAX_SEQ, description="Start at this sequence (default: new events only)."),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            max_length=32,
            description="Resume after this event (set by EventSource when it reconnects).",
        ),
    ] = None,
) -> StreamingResponse:
    """A live, filtered stream of the event log as `text/event-stream`, until the client leaves."""
    subjects = check_subjects(subject)
    if last_event_id is not None and last_event_id.strip():
        # Digits only and within `from_seq`'s range: `int()` would also take "1_0", and a
        # 30-digit sequence went on to the replay.
        sequence = last_event_id.strip()
        if not (_SEQUENCE.fullmatch(sequence) and int(sequence) <= MAX_SEQ):
            raise ProblemError(
                422,
                "invalid-request",
                "Invalid request",
                f"Last-Event-ID {last_event_id!r} is not an event sequence",
            )
        start = int(sequence) + 1
    elif from_seq is not None:
        start = from_seq
    else:
        start = await gw.swarm.floor() + 1
    return StreamingResponse(
        _sse(gw.log, subjects, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(log: EventLog, subjects: list[str], start: int) -> AsyncIterator[str]:
    # A reader task fills a queue, so the response can send keep-alives while the log is quiet
    # without cancelling the replay mid-read.
    queue: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=1000)

    async def read() -> None:
        replay = log.replay(names.STREAM_EVENTS, start_seq=start, subjects=subjects, follow=True)
        async with closing(replay) as deliveries:
            async for delivery in deliveries:
                await queue.put(delivery)

    reader = asyncio.create_task(read())
    try:
        # Sent at once, so the client sees the stream is open before any event comes.
        yield f"retry: 2000\n: streaming {','.join(subjects)} from #{start}\n\n"
        while True:
            try:
                delivery = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                if reader.done():
                    reader.result()  # the replay ended: surface why
                    return
                yield ": keep-alive\n\n"
                continue
            yield _frame(LoggedEvent.of(delivery))
    finally:
        await cancel_and_wait([reader])


def _frame(entry: LoggedEvent) -> str:
    event_type: Any = (entry.event or {}).get("type")
    name = (
        event_type if isinstance(event_type, str) and _EVENT_NAME.match(event_type) else "message"
    )
    data = json.dumps(entry.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)
    return f"id: {entry.seq}\nevent: {name}\ndata: {data}\n\n"
