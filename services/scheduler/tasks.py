"""Adaptive task distribution: which replica gets the next task of a named queue.

Pure: the choice looks only at the replicas' last metric samples (`MetricsFold`), the tasks the
distributor has handed out and not yet seen answered (`inflight`, fresher than any sample), and a
reputation per agent or replica in [0, 1] (0.5 when unknown; the Observer/Hive will provide it).

A replica takes a queue when its spec lists it in `task_queues` (pods report that with every
sample) and it is running. Its spare capacity is the free share of its mailbox,
1 - max(reported depth, tasks in flight to it) / mailbox size; its score is
(1 - w) * spare + w * reputation. The best score wins, ties go to the fewest tasks handed out,
then the replica id (deterministic). Because in-flight tasks lower a replica's score at once and
every new sample replaces its reported depth, the split follows load as it shifts: a replica
whose mailbox fills up gets fewer tasks until it drains. A replica with a full mailbox gets none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.scheduler.autoscale import ReplicaLoad

#: Reputation assumed for an agent whose trust was never published: the Hive's prior
#: (swarm/domain/reputation.py `PRIOR`), which it publishes only once trust moved from it.
DEFAULT_REPUTATION = 0.8


@dataclass(frozen=True, slots=True)
class Candidate:
    replica_id: str
    agent_id: str
    spare: float
    reputation: float
    score: float


@dataclass(slots=True)
class TaskBoard:
    #: The pods' mailbox bound (SWARM_POD_MAILBOX_SIZE): depth is measured against it.
    mailbox_size: int = 256
    #: Weight of reputation against spare capacity in a replica's score.
    reputation_weight: float = 0.3
    #: Agent id or replica id -> score in [0, 1]; a replica's own score wins over its agent's.
    reputation: dict[str, float] = field(default_factory=dict)
    #: Agents the Hive quarantined: they get no tasks until released.
    quarantined: set[str] = field(default_factory=set)
    inflight: Counter[str] = field(default_factory=Counter)
    #: Tasks handed out per replica (this run), for ties and for operators.
    assigned: Counter[str] = field(default_factory=Counter)

    def set_reputation(self, scores: Mapping[str, float]) -> None:
        """Replace the reputation map (values are clamped to [0, 1]); in place, because the
        autoscaler's fold of `agent.reputation_changed` shares it."""
        self.reputation.clear()
        self.reputation.update({k: min(1.0, max(0.0, float(v))) for k, v in scores.items()})

    def reputation_of(self, load: ReplicaLoad) -> float:
        last = load.last
        score = self.reputation.get(last.replica_id, self.reputation.get(last.agent_id))
        return DEFAULT_REPUTATION if score is None else score

    def candidates(self, queue: str, loads: Iterable[ReplicaLoad]) -> list[Candidate]:
        """Running replicas taking `queue` with room in their mailbox, best first."""
        out: list[Candidate] = []
        w = self.reputation_weight
        for load in loads:
            last = load.last
            if queue not in last.task_queues or last.state != "running":
                continue
            if last.agent_id in self.quarantined:
                continue
            depth = max(last.mailbox, self.inflight[last.replica_id])
            spare = max(0.0, 1.0 - depth / self.mailbox_size)
            if spare <= 0.0:
                continue
            reputation = self.reputation_of(load)
            out.append(
                Candidate(
                    last.replica_id,
                    last.agent_id,
                    spare,
                    reputation,
                    (1 - w) * spare + w * reputation,
                )
            )
        out.sort(key=lambda c: (-c.score, self.assigned[c.replica_id], c.replica_id))
        return out

    def choose(
        self, queue: str, loads: Iterable[ReplicaLoad], exclude: Iterable[str] = ()
    ) -> Candidate | None:
        skip = set(exclude)
        for candidate in self.candidates(queue, loads):
            if candidate.replica_id not in skip:
                return candidate
        return None

    def sent(self, replica_id: str) -> None:
        self.inflight[replica_id] += 1
        self.assigned[replica_id] += 1

    def answered(self, replica_id: str) -> None:
        self.inflight[replica_id] -= 1
        if self.inflight[replica_id] <= 0:
            del self.inflight[replica_id]


__all__ = ["DEFAULT_REPUTATION", "Candidate", "TaskBoard"]
