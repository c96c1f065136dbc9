"""Writes that wait out a slow or briefly unreachable JetStream instead of failing the app.

A loaded machine (a load average of 180 was measured beside the Observer) or a nats-server
paused for a few seconds delays acknowledgements past the client's timeout; failing the app then
costs a restart and a recovery for nothing. Every write the commit protocol makes can be repeated
safely, because each one carries a message id and JetStream drops a repeat within the stream's
duplicate window: changelog messages (ids from `_Pipeline`), outputs (their envelope ids) and
dead letters (their source position). So a write that was not acknowledged is sent again, with
backoff, for a bounded time, and only then does the error stop the app. An intake fetch that
fails while the connection is down is waited out by the same loop, under its own wording.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog

from swarm.kernel.eventlog import (
    Appended,
    AppendFailed,
    AppendRefused,
    AppendRequest,
    EventLog,
    NoResponders,
    Reconnecting,
    ServiceUnavailable,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: How long a write is retried by default before the app stops with the error. Beyond about a
#: minute the server is down rather than slow, and a supervisor restarting the app is the better
#: remedy; the changelog's duplicate window (`DEDUPE_WINDOW_S`) must outlast it.
WRITE_RETRY_S = 60.0
#: The longest retry budget an app may choose (so that it stays inside the duplicate window).
MAX_WRITE_RETRY_S = 90.0
#: JetStream's memory of message ids on a changelog stream, in seconds.
DEDUPE_WINDOW_S = 120.0
_FIRST_DELAY = 0.1
_MAX_DELAY = 2.0


class WriteTimeout(AppendFailed):
    """A changelog write was sent but its acknowledgement did not come in time."""


class WriteUnacknowledged(AppendFailed):
    """A write was retried for the whole budget without being acknowledged: the app stops."""


#: Errors that say "not now" rather than "no": the server is slow, restarting or unreachable.
_TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError,  # the log client's RequestTimeout included
    NoResponders,  # no stream answered (JetStream restarting)
    ServiceUnavailable,  # JetStream answered 503 (starting, or no quorum yet)
    Reconnecting,
    WriteTimeout,
)


def transient(exc: BaseException) -> bool:
    """Whether repeating the write may succeed: a timeout or an unreachable server, not a refusal
    (nor a changelog that moved under the app: another writer)."""
    return isinstance(exc, _TRANSIENT)


async def append_all(log: EventLog, requests: Sequence[AppendRequest]) -> list[Appended]:
    """`log.append_batch`, with a failure that is not JetStream's refusal (a timeout, a lost
    connection) raised as `WriteTimeout`, which `retrying` repeats."""
    try:
        return await log.append_batch(requests)
    except AppendRefused:
        raise  # the same request gets the same answer
    except AppendFailed as exc:
        raise WriteTimeout(str(exc)) from exc


async def retrying(
    attempt: Callable[[int], Awaitable[T]],
    *,
    what: str,
    budget: float,
    retry_log: str = "write not acknowledged; retrying",
    recovered_log: str = "write acknowledged after retries",
    spent: Callable[[str], Exception] | None = WriteUnacknowledged,
    **context: Any,
) -> T:
    """`attempt(0)`, then on a transient failure `attempt(1)`, `attempt(2)`... with exponential
    backoff (0.1 s doubling to 2 s), until `budget` seconds have passed since the first began.

    Raises what a refusal raised at once, and `spent(message)` when the budget is spent (the
    last failure itself when `spent` is None: a read, which no caller waits for as a write).
    `retry_log` and `recovered_log` word its log lines, which carry `context` too. The caller
    guarantees that repeating the attempt cannot store anything twice.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    delay = _FIRST_DELAY
    n = 0
    while True:
        try:
            result = await attempt(n)
        except Exception as exc:
            if not transient(exc):
                raise
            waited = loop.time() - started
            if waited + delay > budget:
                if spent is None:
                    raise
                raise spent(
                    f"{what} not acknowledged for {waited:.0f} s ({n + 1} attempts): {exc}"
                ) from exc
            log.warning(
                retry_log,
                what=what,
                attempt=n + 1,
                waited_s=round(waited, 1),
                error=str(exc) or type(exc).__name__,
                **context,
            )
        else:
            if n:
                log.info(
                    recovered_log,
                    what=what,
                    attempts=n + 1,
                    waited_s=round(loop.time() - started, 1),
                    **context,
                )
            return result
        await asyncio.sleep(delay)
        delay = min(2 * delay, _MAX_DELAY)
        n += 1


__all__ = [
    "DEDUPE_WINDOW_S",
    "MAX_WRITE_RETRY_S",
    "WRITE_RETRY_S",
    "WriteTimeout",
    "WriteUnacknowledged",
    "append_all",
    "retrying",
    "transient",
]
