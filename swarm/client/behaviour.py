"""Agents that behave alike: the Observer's behaviour vectors in Postgres (table
agent_behaviour), nearest by cosine distance to one agent's latest.

Blocking (psycopg's synchronous API, one short-lived connection per call): the HTTP API runs it
in a worker thread, the CLI as it is. The Observer's package is imported on first call: it brings
river, scipy and numpy with it, which no other verb should pay for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from swarm.client.errors import INVALID, UNAVAILABLE, ClientError

__all__ = ["NotRecorded", "Similar", "SimilarAgents", "similar_agents"]


@dataclass(frozen=True, slots=True)
class Similar:
    agent_id: str
    namespace: str
    name: str
    #: Cosine distance between the latest behaviour vectors (0: the same behaviour).
    distance: float
    #: End of the Observer window the vector is from.
    window_end: datetime


@dataclass(frozen=True, slots=True)
class SimilarAgents:
    #: The agent asked about.
    agent_id: str
    #: Nearest first.
    similar: tuple[Similar, ...]


class NotRecorded(ClientError):
    """The Observer has recorded no behaviour for the agent (yet)."""

    def __init__(self, agent: str) -> None:
        super().__init__(
            f"no behaviour recorded for agent {agent!r}",
            # As a name the Observer does not know: what was asked for is not there to find.
            code=INVALID,
            hint="the Observer records a vector per agent per window once it runs",
        )


def similar_agents(database_url: str, agent: str, k: int) -> SimilarAgents:
    """The `k` agents behaving most like `agent` (an id, a name, or `namespace/name`).

    `NotRecorded` when the Observer has nothing for it; an UNAVAILABLE `ClientError` when the
    database cannot be read.
    """
    import psycopg

    from services.observer.behaviour import BehaviourStore

    store = BehaviourStore(database_url)
    try:
        agent_id = store.resolve(agent)
        if agent_id is None:
            raise NotRecorded(agent)
        rows = store.similar(agent_id, k)
    except psycopg.Error as exc:
        raise ClientError(f"database: {exc}".strip(), code=UNAVAILABLE) from None
    finally:
        store.close()
    return SimilarAgents(
        agent_id,
        tuple(
            Similar(r.agent_id, r.namespace, r.name, round(r.distance, 6), r.window_end)
            for r in rows
        ),
    )
