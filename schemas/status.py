"""The status the Hive derives for an agent from its replicas.

Written on `AgentStatusChanged` events and shown in the read views. A module of its own so that
a reader of views (the CLI drawing `swarm agent ls`) need not build every event model to know
it: importing `schemas.events` costs ~50 ms of a CLI call here (bench/cli.py).
"""

from __future__ import annotations

from typing import Literal

AgentStatus = Literal[
    "requested", "scheduled", "starting", "running", "degraded", "failed", "stopped"
]

__all__ = ["AgentStatus"]
