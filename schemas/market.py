"""The scheduler's market: preemption proposals and the record of a preemption.

Placements stay the Hive's to commit. When a replica of a higher priority fits on no pod, the
scheduler proposes one `placement.preempt`: the victims to move off a pod and the placement they
make room for, in one command, so the Hive commits both atomically or neither. A victim is never
of an equal or higher priority; the Hive checks that again on its own state.

Each victim gets `agent.replica_preempted` (the record: by whom, at which priorities) followed by
`agent.replica_requested` carrying its last snapshot, so it waits for a placement again and is
rescheduled when capacity returns. Clearing records (offers, prices, reasons) are not events:
they are high volume and answered live by the scheduler on `swarm.query.market.state`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from schemas.envelope import Payload
from schemas.registry import REGISTRY
from schemas.specs import MAX_PRIORITY, Id, PolicyName

Priority = Annotated[int, Field(ge=-MAX_PRIORITY, le=MAX_PRIORITY)]

#: Victims one preemption may name; keeps the decision within one atomic append.
MAX_VICTIMS = 64


class Victim(Payload):
    agent_id: Id
    replica_id: Id


@REGISTRY.command("placement", "preempt")
class PreemptPlacement(Payload):
    """Move `victims` off `pod_id` and place the waiting replica there, all or nothing."""

    agent_id: Id
    replica_id: Id
    pod_id: Id
    victims: list[Victim] = Field(min_length=1, max_length=MAX_VICTIMS)
    policy: PolicyName
    reason: str = Field(default="", max_length=500)


@REGISTRY.event("agent", "replica_preempted")
class ReplicaPreempted(Payload):
    """A replica was moved off its pod for one of a strictly higher priority.

    The `replica_requested` that follows carries its snapshot; it waits for a placement again.
    """

    agent_id: Id
    replica_id: Id
    pod_id: Id
    #: Effective priorities (`AgentSpec.effective_priority`), within the spec's bounds.
    priority: Priority
    by_agent_id: Id
    by_replica_id: Id
    by_priority: Priority
    reason: str = Field(default="", max_length=500)
