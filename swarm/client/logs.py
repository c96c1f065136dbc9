"""An agent's log lines from the SWARM_LOGS stream, filtered by level, text and age.

The lines are on `swarm.logs.<pod>.<level>`, so the level filter is a subject filter applied by
the server and `since` is a JetStream seek by time: only matching lines cross the wire. Used by
`swarm logs` and by the HTTP API's `GET …/agents/{name}/logs`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

from schemas import names
from swarm.client.commands import closing
from swarm.client.errors import INVALID, ClientError
from swarm.client.text import printable
from swarm.kernel.eventlog import Delivery, EventLog

__all__ = ["LOG_LEVELS", "agent_lines", "log_message", "log_time", "shown_levels"]

#: Log levels from least to most severe; a level filter X shows X and the levels after it.
LOG_LEVELS = ("debug", "info", "warn", "error")


def shown_levels(level: str | None) -> tuple[str, ...]:
    """The levels shown when the lowest wanted is `level` (None: all of them)."""
    if level is None:
        return LOG_LEVELS
    if level.lower() not in LOG_LEVELS:
        raise ClientError(
            f"--level {level!r} is not a log level",
            code=INVALID,
            hint=f"one of: {', '.join(LOG_LEVELS)}",
        )
    return LOG_LEVELS[LOG_LEVELS.index(level.lower()) :]


async def agent_lines(
    log: EventLog,
    agent_id: str,
    *,
    levels: tuple[str, ...] = LOG_LEVELS,
    grep: str | None = None,
    since: datetime | None = None,
    follow: bool = False,
) -> AsyncIterator[dict[str, Any]]:
    """Yield the agent's log entries (dicts with a `time` added) that pass the filters."""
    if levels == LOG_LEVELS:
        subjects = [names.LOGS_ALL]
    else:
        subjects = [f"{names.LOGS_PREFIX}.*.{lvl}" for lvl in levels]
    replay = log.replay(
        names.STREAM_LOGS, subjects=subjects, start_time=since, follow=follow, idle_timeout=0.25
    )
    async with closing(replay) as deliveries:
        async for delivery in deliveries:
            try:
                entry = json.loads(delivery.data)
            except ValueError:
                continue
            if not isinstance(entry, dict) or entry.get("agent_id") != agent_id:
                continue
            if str(entry.get("level", "info")) not in levels:
                continue
            message = printable(log_message(entry))
            if grep is not None and grep not in message:
                continue
            yield {"time": log_time(entry, delivery), **entry}


def log_time(entry: Mapping[str, Any], delivery: Delivery) -> str:
    time_ms = entry.get("time_ms")
    if isinstance(time_ms, int):
        try:
            moment = datetime.fromtimestamp(time_ms / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            moment = delivery.timestamp.astimezone(UTC)
    else:
        moment = delivery.timestamp.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def log_message(entry: Mapping[str, Any]) -> str:
    if entry.get("kind") == "event":
        return f"event {entry.get('type', '?')}: {entry.get('data', '')}"
    return str(entry.get("message", ""))
