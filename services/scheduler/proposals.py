"""Placement proposals: their ids, and the ledger of those sent but not yet answered.

Between sending a proposal and reading its outcome, the placement is in neither the log nor the
view. The ledger holds what such proposals would take on each pod, so the next proposals are
planned against it: a burst of replicas is spread instead of all going to the pod that looked
emptiest, and the scheduler never over-commits a pod in its own eyes. A proposal leaves the
ledger when the view shows its replica placed (or no longer waiting), when it is rejected, or
when sending it failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from schemas import names
from swarm.domain.placement import ReplicaKey
from swarm.kernel.ids import IdKey

_PREFIX = "place"
#: Prefix of a `placement.preempt` proposal's id (same numbering as a placement's).
PREEMPT_PREFIX = "preempt"
_PREFIXES = (_PREFIX, PREEMPT_PREFIX)


def proposal_id(
    request_seq: int, attempt: int, replica_id: str, key: IdKey, prefix: str = _PREFIX
) -> str:
    """The command id of a proposal: the same request and attempt always give the same id.

    `request_seq` (the stream sequence of the replica's `replica_requested`) identifies both the
    replica and this request to place it, so a restarted scheduler proposing again sends the
    same id and JetStream drops the duplicate. `attempt` counts rejections already read, so a
    retry after a rejection is a new command. The tail is keyed (`swarm.kernel.ids`): nobody
    without the scheduler's secret can predict an id and answer it before the Hive does.
    """
    if request_seq < 1 or attempt < 0:
        raise ValueError("request_seq must be >= 1 and attempt >= 0")
    if not names.is_token(replica_id):
        raise ValueError(f"replica id {replica_id!r} is not a token")
    return f"{prefix}-{request_seq}-{attempt}-{key.tag(prefix, request_seq, attempt, replica_id)}"


def parse_proposal_id(command_id: str) -> tuple[int, int] | None:
    """(request seq, attempt) of an id made by `proposal_id`; None for any other id."""
    parts = command_id.split("-", 3)
    if (
        len(parts) < 3
        or parts[0] not in _PREFIXES
        or not (parts[1].isdigit() and parts[2].isdigit())
    ):
        return None
    return int(parts[1]), int(parts[2])


@dataclass(frozen=True, slots=True)
class Hold:
    """Capacity tentatively taken on one pod by proposals in flight."""

    memory_mb: int = 0
    fuel_per_s: int = 0
    slots: int = 0


@dataclass(frozen=True, slots=True)
class Proposal:
    command_id: str
    agent_id: str
    replica_id: str
    request_seq: int
    pod_id: str
    memory_mb: int
    fuel_per_s: int
    reason: str
    #: Replicas to move off the pod first: a `placement.preempt` when not empty.
    victims: tuple[ReplicaKey, ...] = ()
    #: What the victims hold on the pod: a preemption holds its replica's need minus this
    #: (the pod as it will be once the Hive commits it).
    freed: Hold = Hold()

    @property
    def key(self) -> ReplicaKey:
        return (self.agent_id, self.replica_id)


class InFlight:
    """Proposals sent and not yet answered, at most one per replica, and what they hold."""

    def __init__(self) -> None:
        self._by_id: dict[str, Proposal] = {}
        self._by_replica: dict[ReplicaKey, str] = {}
        self._held: dict[str, Hold] = {}
        #: Victims named by preemptions in flight: not offered to another preemption.
        self.victims: set[ReplicaKey] = set()
        self._victim_of: dict[ReplicaKey, str] = {}
        #: Per preemption, the credit of victims that already left the pod in the view (their
        #: release folded, e.g. the first events of the Hive's commit read in one fetch and the
        #: preemptor's placement in the next): it must not be counted twice.
        self._left: dict[str, Hold] = {}
        self._gone: set[ReplicaKey] = set()

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, key: object) -> bool:
        return key in self._by_replica

    def __iter__(self) -> Iterator[Proposal]:
        return iter(list(self._by_id.values()))

    def held(self, pod_id: str) -> Hold:
        return self._held.get(pod_id, Hold())

    def add(self, proposal: Proposal) -> None:
        if proposal.key in self._by_replica:
            raise ValueError(f"replica {proposal.replica_id} already has a proposal in flight")
        self._by_id[proposal.command_id] = proposal
        self._by_replica[proposal.key] = proposal.command_id
        self.victims.update(proposal.victims)
        self._victim_of.update(dict.fromkeys(proposal.victims, proposal.command_id))
        self._hold(proposal, +1)

    def pop(self, command_id: str) -> Proposal | None:
        """Drop the proposal with this id and release what it held."""
        proposal = self._by_id.pop(command_id, None)
        if proposal is not None:
            del self._by_replica[proposal.key]
            self.victims.difference_update(proposal.victims)
            self._gone.difference_update(proposal.victims)
            for victim in proposal.victims:
                self._victim_of.pop(victim, None)
            self._hold(proposal, -1)
            left = self._left.pop(command_id, None)
            if left is not None:
                self._shift(proposal.pod_id, Hold(-left.memory_mb, -left.fuel_per_s, -left.slots))
        return proposal

    def victim_left(self, key: ReplicaKey, memory_mb: int, fuel_per_s: int) -> None:
        """The view released this victim: withdraw its credit from its preemption's hold."""
        command_id = self._victim_of.get(key)
        if command_id is None or key in self._gone:
            return
        self._gone.add(key)
        proposal = self._by_id[command_id]
        left = self._left.get(command_id, Hold())
        self._left[command_id] = Hold(
            left.memory_mb + memory_mb, left.fuel_per_s + fuel_per_s, left.slots + 1
        )
        self._shift(proposal.pod_id, Hold(memory_mb, fuel_per_s, 1))

    def _shift(self, pod_id: str, by: Hold) -> None:
        held = self.held(pod_id)
        updated = Hold(
            held.memory_mb + by.memory_mb,
            held.fuel_per_s + by.fuel_per_s,
            held.slots + by.slots,
        )
        if updated == Hold():
            self._held.pop(pod_id, None)
        else:
            self._held[pod_id] = updated

    def pop_replica(self, key: ReplicaKey) -> Proposal | None:
        command_id = self._by_replica.get(key)
        return self.pop(command_id) if command_id is not None else None

    def _hold(self, p: Proposal, sign: int) -> None:
        freed = p.freed
        self._shift(
            p.pod_id,
            Hold(
                sign * (p.memory_mb - freed.memory_mb),
                sign * (p.fuel_per_s - freed.fuel_per_s),
                sign * (1 - freed.slots),
            ),
        )
