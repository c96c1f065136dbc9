"""Asking the running scheduler for its market: offers with posted prices, recent clearings.

Answered on `swarm.query.market.state` (core NATS request/reply) by the scheduler, not the Hive:
clearings live in the scheduler's memory, not on the log. Used by `swarm market` and the HTTP
API's `GET /v1/market`. On a stack with principals the scheduler answers signed queries alone,
and a user's with a role in every namespace (else a `QueryFailed`, as the Hive's queries).
"""

from __future__ import annotations

from typing import Any

from schemas import names
from swarm.client.errors import UNAVAILABLE, ClientError
from swarm.client.queries import QueryFailed, request_object
from swarm.kernel.eventlog import EventLog

__all__ = ["QUERY_TIMEOUT", "ask_market"]

QUERY_TIMEOUT = 2.0


async def ask_market(
    log: EventLog, limit: int, *, timeout: float = QUERY_TIMEOUT
) -> dict[str, Any]:
    """The scheduler's market state with its `limit` latest clearings."""
    answer = await request_object(
        log,
        names.QUERY_MARKET_STATE,
        {"limit": limit},
        timeout=timeout,
        answerer="the scheduler",
        unanswered=_no_scheduler,
    )
    if "error" in answer:
        raise QueryFailed.of(answer)
    return answer


def _no_scheduler(why: str) -> ClientError:
    return ClientError(
        f"no scheduler answered {names.QUERY_MARKET_STATE}: {why}",
        code=UNAVAILABLE,
        hint="is the scheduler running? (`swarm up` starts one; `python -m services.scheduler`)",
    )
