"""The Hive's read-only queries for the CLI: the client layer's, with a lagging replica's note
printed on stderr.

See `swarm.client.queries` for how reads catch up with the log (`at_least`).
"""

from __future__ import annotations

from swarm.cli.output import status
from swarm.client import queries as _queries
from swarm.client.eventlog import EventLog
from swarm.client.queries import CATCH_UP, QUERY_TIMEOUT, QueryFailed

__all__ = ["CATCH_UP", "QUERY_TIMEOUT", "HiveQueries", "QueryFailed"]


class HiveQueries(_queries.HiveQueries):
    """`swarm.client.queries.HiveQueries`, saying on stderr when an answer may be out of date."""

    def __init__(
        self, log: EventLog, *, timeout: float = QUERY_TIMEOUT, catch_up: float = CATCH_UP
    ) -> None:
        super().__init__(log, timeout=timeout, catch_up=catch_up, on_stale=status)
