"""Asking the running scheduler for its market: offers with posted prices, recent clearings.

Answered on `swarm.query.market.state` (core NATS request/reply) by the scheduler, not the Hive:
clearings live in the scheduler's memory, not on the log. Used by `swarm market` and the HTTP
API's `GET /v1/market`.
"""

from __future__ import annotations

import json
from typing import Any

from schemas import names
from swarm.client.errors import FAILED, UNAVAILABLE, ClientError
from swarm.kernel.eventlog import EventLog, NoResponders, RequestTimeout

__all__ = ["QUERY_TIMEOUT", "ask_market"]

QUERY_TIMEOUT = 2.0


async def ask_market(
    log: EventLog, limit: int, *, timeout: float = QUERY_TIMEOUT
) -> dict[str, Any]:
    """The scheduler's market state with its `limit` latest clearings."""
    subject = names.QUERY_MARKET_STATE
    try:
        body = json.dumps({"limit": limit}).encode()
        reply = await log.request(subject, body, timeout=timeout)
    except NoResponders:
        raise _no_scheduler("nothing is subscribed") from None
    except RequestTimeout:
        raise _no_scheduler(f"no answer within {timeout:g}s") from None
    try:
        answer = json.loads(reply.data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ClientError(f"the scheduler's answer to {subject} is not a JSON object", code=FAILED)
    if "error" in answer:
        raise ClientError(str(answer["error"]), code=FAILED)
    return answer


def _no_scheduler(why: str) -> ClientError:
    return ClientError(
        f"no scheduler answered {names.QUERY_MARKET_STATE}: {why}",
        code=UNAVAILABLE,
        hint="is the scheduler running? (`swarm up` starts one; `python -m services.scheduler`)",
    )
