"""Self-healing: what the Hive does about a misbehaving agent, and the agent's reputation.

The Hive's reconcile loop (leader only) reads the recorded findings (`agent.anomaly_detected`)
and the agent's `healing` policy and sends these commands, so every action is decided by the
same rules as a user's and is on the log with its reason and the finding that caused it. Users
may send them too (for example `agent.release` after looking into a quarantine).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from schemas.envelope import AwareDatetime, Payload
from schemas.registry import REGISTRY
from schemas.specs import Id, Reason, SnapshotRef, Version

#: Why a healing action is asked for: sender input, so refused (never cut) beyond its bound.
HealingReason = Annotated[str, Field(min_length=1, max_length=1000)]
#: An agent's trust, in [0, 1].
Trust = Annotated[float, Field(ge=0, le=1)]

# --- commands ------------------------------------------------------------------------------------


@REGISTRY.command("agent", "quarantine")
class QuarantineAgent(Payload):
    """Stop giving the agent messages and tasks: its pods refuse mesh deliveries to it."""

    agent_id: Id
    reason: HealingReason
    #: The finding that caused it, when an anomaly did.
    anomaly_id: Id | None = None


@REGISTRY.command("agent", "release")
class ReleaseAgent(Payload):
    """End a quarantine: the agent gets messages again."""

    agent_id: Id
    reason: HealingReason = "released by request"


@REGISTRY.command("replica", "rewind")
class RewindReplica(Payload):
    """Restart a replica from its last snapshot taken before `before` (its last good state)."""

    agent_id: Id
    replica_id: Id
    before: AwareDatetime
    reason: HealingReason
    anomaly_id: Id | None = None


@REGISTRY.command("agent", "revert")
class RevertAgent(Payload):
    """Roll the agent back to its previous version because the current one misbehaves."""

    agent_id: Id
    reason: HealingReason
    anomaly_id: Id | None = None


@REGISTRY.command("reputation", "publish")
class PublishReputation(Payload):
    """Put the agent's current trust on the log (sent when it moved enough since the last time;
    the Hive computes the value itself, the command only says when)."""

    agent_id: Id


# --- events --------------------------------------------------------------------------------------


@REGISTRY.event("agent", "quarantined")
class AgentQuarantined(Payload):
    agent_id: Id
    reason: Reason
    anomaly_id: Id | None = None


@REGISTRY.event("agent", "released")
class AgentReleased(Payload):
    agent_id: Id
    reason: Reason


@REGISTRY.event("agent", "replica_rewound")
class ReplicaRewound(Payload):
    """A replica is restarted from its state before the anomaly began: the newest it saved
    before `before` where its pod's snapshot history still has one, else `snapshot` (the last
    the log knows from before; None: an empty state). The `replica_requested` that follows
    carries `restore: exact`; the `replica_starting` after it names the snapshot used."""

    agent_id: Id
    replica_id: Id
    snapshot: SnapshotRef | None
    #: When the Hive learnt of that snapshot (the replica had it at that time).
    snapshot_at: datetime | None
    before: datetime
    reason: Reason
    anomaly_id: Id | None = None


@REGISTRY.event("agent", "reverted")
class AgentReverted(Payload):
    """The agent is rolled back because of a finding; the rollout events follow."""

    agent_id: Id
    from_version: Version
    to_version: Version
    reason: Reason
    anomaly_id: Id | None = None


@REGISTRY.event("agent", "healing_skipped")
class AgentHealingSkipped(Payload):
    """A healing action was due but not taken (the namespace's healing budget was used up);
    the finding counts as handled, and a user may still act on it."""

    agent_id: Id
    action: Literal["quarantine", "rollback"]
    reason: Reason
    anomaly_id: Id | None = None


@REGISTRY.event("agent", "reputation_changed")
class ReputationChanged(Payload):
    """The agent's trust in [0, 1] moved meaningfully since it was last published."""

    agent_id: Id
    trust: Trust
    previous: Trust
    #: What moved it last.
    reason: Reason
