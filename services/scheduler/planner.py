"""The scheduler's pure core: fold the log, then plan proposals for the replicas that wait.

No I/O and no clock: the service passes the time in, so the same events and times always give
the same proposals (tests drive it directly, and a restarted scheduler re-derives the same ids).

Retries: a rejected proposal releases what it held and its replica waits `retry_backoff`
seconds, doubling with each rejection of the same request up to `max_backoff`, before it is
proposed again under a new id. A replica that fits on no ready pod stays waiting and is reported
once (until it is placed or fits again), not on every pass.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas import CommandRejected, Envelope, commands, market
from services.scheduler.policies import Cleared, Need, Offer, Policy
from services.scheduler.preemption import Candidate, choose_preemption
from services.scheduler.proposals import (
    PREEMPT_PREFIX,
    Hold,
    InFlight,
    Proposal,
    parse_proposal_id,
    proposal_id,
)
from services.scheduler.view import HANDLED, ClusterView, Request
from swarm.domain.placement import PLACED, ReplicaKey
from swarm.kernel.ids import IdKey

#: Outcomes of these command types answer our proposals.
_PROPOSALS = frozenset({commands.ProposePlacement.TYPE, market.PreemptPlacement.TYPE})
#: Preemptions proposed, and searches for one made, per planning pass (a search looks at every
#: pod and the replicas on it).
MAX_PREEMPTIONS = 8
MAX_PREEMPTION_TRIES = 16

#: `ProposePlacement.reason` is at most this long.
_MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class Retry:
    """A proposal of ours was rejected; its replica is proposed again at `at` if still waiting."""

    proposal: Proposal | None
    command_id: str
    rule: str | None
    reason: str
    at: float | None


@dataclass(slots=True)
class Plan:
    proposals: list[Proposal] = field(default_factory=list)
    #: Replicas found to fit on no ready pod in this pass (each reported once).
    unplaceable: list[Need] = field(default_factory=list)
    #: Every request this pass considered, placed or not, with the reason.
    cleared: list[Cleared] = field(default_factory=list)


class Planner:
    def __init__(
        self,
        policy: Policy,
        *,
        retry_backoff: float = 0.5,
        max_backoff: float = 8.0,
        preemption: bool = False,
        recent: int = 200,
        ids: IdKey | None = None,
    ) -> None:
        self.policy = policy
        #: The key behind proposal ids (`proposals.proposal_id`).
        self.ids = ids or IdKey.random()
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self.preemption = preemption
        #: The latest clearings, newest last, for `swarm market`.
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self.view = ClusterView()
        self.in_flight = InFlight()
        #: Rejections read per request sequence: the attempt number of the next proposal.
        self._attempts: dict[int, int] = {}
        self._retry_at: dict[ReplicaKey, float] = {}
        self._unplaceable: set[ReplicaKey] = set()
        #: Something changed that may let a waiting replica be placed.
        self._dirty = False

    # -- state ------------------------------------------------------------------------------------

    @property
    def attempts(self) -> Mapping[int, int]:
        """Rejections read per waiting request (by request sequence)."""
        return self._attempts

    def restore(self, view: ClusterView, attempts: Mapping[int, int]) -> None:
        """Continue from a view and attempts recovered elsewhere (the scheduler's tables).

        Proposals in flight and pending retries are kept: they were sent from this process and
        their outcomes are still to come; a fresh process simply has none.
        """
        self.view = view
        self._attempts = dict(attempts)
        self._unplaceable.clear()
        self._dirty = True

    # -- folding ----------------------------------------------------------------------------------

    def apply(self, envelope: Envelope[Any], seq: int, now: float) -> Retry | None:
        """Fold the event at `seq`; returns a `Retry` when it rejects one of our proposals."""
        if seq <= self.view.applied_seq:
            return None
        retry = None
        if isinstance(envelope.data, CommandRejected):
            retry = self._rejected(envelope.data, now)
        victim = self._victim_before(envelope.data)
        for request in self.view.fold(envelope, seq):
            self._ended(request)
        if victim is not None:
            self._victim_after(*victim)
        if type(envelope.data) in HANDLED:
            self._dirty = True
        return retry

    def _victim_before(self, data: Any) -> tuple[ReplicaKey, str, int, int] | None:
        """A victim of a preemption in flight this event is about, with its pod and size."""
        key = (getattr(data, "agent_id", None), getattr(data, "replica_id", None))
        if key not in self.in_flight.victims:
            return None
        agent_id, replica_id = str(key[0]), str(key[1])
        agent = self.view.agents.get(agent_id)
        replica = agent.replicas.get(replica_id) if agent is not None else None
        if agent is None or replica is None or replica.pod_id is None:
            return None
        demand = agent.demand_of(replica)
        return (agent_id, replica_id), replica.pod_id, demand.memory_mb, demand.fuel_per_s

    def _victim_after(self, key: ReplicaKey, pod_id: str, memory_mb: int, fuel_per_s: int) -> None:
        pod = self.view.pods.get(pod_id)
        if pod is None or key not in pod.replicas:
            self.in_flight.victim_left(key, memory_mb, fuel_per_s)

    def skip(self, seq: int) -> None:
        """Pass over a message that is not a readable event."""
        self.view.advance(seq)

    def _ended(self, request: Request) -> None:
        """The request no longer waits (placed, stopped, moved): forget all we kept for it."""
        self.in_flight.pop_replica(request.key)
        self._attempts.pop(request.seq, None)
        self._retry_at.pop(request.key, None)
        self._unplaceable.discard(request.key)

    def _rejected(self, outcome: CommandRejected, now: float) -> Retry | None:
        if outcome.command_type not in _PROPOSALS:
            return None
        parsed = parse_proposal_id(outcome.command_id)
        if parsed is None:
            return None  # someone else's proposal
        request_seq, attempt = parsed
        key = self.view.requests.get(request_seq)
        if key is not None and outcome.command_id not in (
            proposal_id(request_seq, attempt, key[1], self.ids),
            proposal_id(request_seq, attempt, key[1], self.ids, PREEMPT_PREFIX),
        ):
            return None  # not an id we made: a foreign write, or another scheduler's key
        proposal = self.in_flight.pop(outcome.command_id)
        if key is None:
            # That request no longer waits: nothing to retry. (Folding the log from the start,
            # as the tests' recount does, this also skips rejections of requests placed later.)
            return Retry(proposal, outcome.command_id, outcome.rule, outcome.reason, None)
        # Attempts come from the log (kept in the scheduler's tables), not from memory, so a
        # restarted scheduler continues the numbering instead of re-sending an id JetStream
        # would drop as a duplicate.
        attempts = self._attempts[request_seq] = max(
            self._attempts.get(request_seq, 0), attempt + 1
        )
        at = now + self._backoff(attempts)
        self._retry_at[key] = at
        self._dirty = True
        return Retry(proposal, outcome.command_id, outcome.rule, outcome.reason, at)

    def _backoff(self, failures: int) -> float:
        return float(min(self.retry_backoff * 2 ** max(failures - 1, 0), self.max_backoff))

    def abandon(self, proposals: list[Proposal], now: float) -> None:
        """Sending failed: release what the proposals held and retry them after a backoff.

        The attempt number stays, so a retry re-sends the same ids: if some did reach the log
        after all, JetStream drops the copies and the Hive answers the originals once.
        """
        for proposal in proposals:
            if self.in_flight.pop(proposal.command_id) is not None:
                self._retry_at[proposal.key] = now + self.retry_backoff
        self._dirty = True

    # -- planning ---------------------------------------------------------------------------------

    def wants_to_plan(self, now: float) -> bool:
        return self._dirty or any(at <= now for at in self._retry_at.values())

    def offers(self) -> dict[str, Offer]:
        """Every pod with what is free on it once proposals in flight are deducted."""
        offers: dict[str, Offer] = {}
        for pod in self.view.pods.values():
            memory, fuel, slots = pod.free()
            held = self.in_flight.held(pod.pod_id)
            offers[pod.pod_id] = Offer(
                pod.pod_id,
                pod.status == "ready",
                memory - held.memory_mb,
                fuel - held.fuel_per_s,
                slots - held.slots,
                pod.zone,
                pod.labels,
                pod.energy_cost,
                pod.capacity.memory_mb,
                pod.capacity.fuel_per_s,
                pod.capacity.slots,
            )
        return offers

    def plan(self, now: float, limit: int = 512, clock: float | None = None) -> Plan:
        """Proposals for waiting replicas, at most `limit` of them, cleared by the policy.

        The policy sees every eligible waiting replica at once (the market orders them by
        priority and bid, the baselines by age) and deducts each placement before the next, and
        each proposal is entered in flight, so one pass never places more on a pod than the pod
        has free. Replicas still waiting may then preempt lower-priority ones (market only).
        `clock` stamps the clearing records (wall time; `now` is monotonic).
        """
        self._dirty = False
        plan = Plan()
        needs: list[Need] = []
        for key, request_seq in self.view.waiting.items():
            if key in self.in_flight:
                continue
            retry_at = self._retry_at.get(key)
            if retry_at is not None:
                if retry_at > now:
                    continue
                del self._retry_at[key]
            d = self.view.demand(key)
            needs.append(
                Need(
                    key[0],
                    key[1],
                    d.memory_mb,
                    d.fuel_per_s,
                    d.priority,
                    d.max_price,
                    d.node_selector,
                    d.zones,
                    d.avoid_zones,
                    request_seq,
                )
            )
        if not needs:
            return plan
        offers = self.offers()
        plan.cleared = self.policy.clear(needs, list(offers.values()), limit)
        if len(plan.cleared) < len(needs):
            self._dirty = True  # more next time
        waiting: list[Need] = []
        for cleared in plan.cleared:
            need, choice = cleared.need, cleared.choice
            key = (need.agent_id, need.replica_id)
            offer = offers.get(choice.pod_id) if choice is not None else None
            # A policy cannot make the scheduler over-commit: a choice that does not fit is none.
            if choice is None or offer is None or not offer.fits(need):
                if cleared.wait == "no_fit":
                    # Priced out or constrained out: preempting would not help (or not honestly).
                    waiting.append(need)
                if key not in self._unplaceable:
                    self._unplaceable.add(key)
                    plan.unplaceable.append(need)
                self._record(clock, cleared, None)
                continue
            self._unplaceable.discard(key)
            proposal = Proposal(
                proposal_id(need.seq, self._attempts.get(need.seq, 0), key[1], self.ids),
                key[0],
                key[1],
                need.seq,
                choice.pod_id,
                need.memory_mb,
                need.fuel_per_s,
                choice.reason[:_MAX_REASON],
            )
            self.in_flight.add(proposal)
            offers[choice.pod_id] = offer.minus(need)
            plan.proposals.append(proposal)
            self._record(clock, cleared, proposal)
        if self.preemption and waiting:
            plan.proposals += self._preempt(waiting, clock)
        return plan

    def _preempt(self, waiting: list[Need], clock: float | None) -> list[Proposal]:
        """Preemptions for replicas that fit on no pod, highest priority first.

        At most `MAX_PREEMPTIONS` proposals and `MAX_PREEMPTION_TRIES` searches per pass, and
        a request shaped like one that found nothing in this pass is not searched again, so a
        large backlog of high-priority replicas costs a bounded amount per pass.
        """
        lowest = self._lowest_placed_priority()
        if lowest is None:
            return []
        offers = self.offers()  # with the holds of this pass's proposals
        placed = {pod_id: self._candidates(pod_id) for pod_id in sorted(offers)}
        out: list[Proposal] = []
        failed: set[tuple[object, ...]] = set()
        tries = 0
        for need in sorted(waiting, key=lambda n: (-n.priority, n.seq)):
            if need.priority <= lowest:
                break  # nobody placed has a lower priority; nor does anyone after it
            shape = (
                need.priority,
                need.memory_mb,
                need.fuel_per_s,
                need.node_selector,
                need.zones,
                need.avoid_zones,
            )
            if shape in failed:
                continue
            if len(out) >= MAX_PREEMPTIONS or tries >= MAX_PREEMPTION_TRIES:
                self._dirty = True  # more next pass
                break
            tries += 1
            found = choose_preemption(need, [(offers[p], placed[p]) for p in offers])
            if found is None:
                failed.add(shape)
                continue
            key = (need.agent_id, need.replica_id)
            freed = Hold(
                sum(v.memory_mb for v in found.victims),
                sum(v.fuel_per_s for v in found.victims),
                len(found.victims),
            )
            proposal = Proposal(
                proposal_id(
                    need.seq, self._attempts.get(need.seq, 0), key[1], self.ids, PREEMPT_PREFIX
                ),
                key[0],
                key[1],
                need.seq,
                found.pod_id,
                need.memory_mb,
                need.fuel_per_s,
                found.reason[:_MAX_REASON],
                tuple((v.agent_id, v.replica_id) for v in found.victims),
                freed,
            )
            self.in_flight.add(proposal)
            # As the in-flight ledger counts it (the pod once the Hive commits it); the victims
            # are not offered to another preemption.
            offer = offers[found.pod_id]
            offers[found.pod_id] = dataclasses.replace(
                offer,
                free_memory_mb=offer.free_memory_mb + freed.memory_mb - need.memory_mb,
                free_fuel_per_s=offer.free_fuel_per_s + freed.fuel_per_s - need.fuel_per_s,
                free_slots=offer.free_slots + freed.slots - 1,
            )
            placed[found.pod_id] = [c for c in placed[found.pod_id] if c not in found.victims]
            self._unplaceable.discard(key)
            out.append(proposal)
            self._record(clock, Cleared(need, None, reason=found.reason), proposal)
        return out

    def _lowest_placed_priority(self) -> int | None:
        lowest: int | None = None
        for agent in self.view.agents.values():
            if any(r.phase in PLACED for r in agent.replicas.values()):
                for demand in agent.versions.values():
                    lowest = demand.priority if lowest is None else min(lowest, demand.priority)
        return lowest

    def _candidates(self, pod_id: str) -> list[Candidate]:
        """Replicas running (or about to) on the pod that no preemption in flight names yet."""
        out: list[Candidate] = []
        for agent_id, replica_id in self.view.pods[pod_id].replicas:
            agent = self.view.agents[agent_id]
            replica = agent.replicas[replica_id]
            if replica.phase == "stopping" or (agent_id, replica_id) in self.in_flight.victims:
                continue
            d = agent.demand_of(replica)
            out.append(
                Candidate(
                    agent_id, replica_id, d.priority, d.memory_mb, d.fuel_per_s, replica.placed_seq
                )
            )
        return out

    def _record(self, clock: float | None, cleared: Cleared, proposal: Proposal | None) -> None:
        if self.recent.maxlen == 0:
            return
        need = cleared.need
        self.recent.append(
            {
                "at": clock,
                "agent_id": need.agent_id,
                "replica_id": need.replica_id,
                "priority": need.priority,
                "max_price": need.max_price,
                "outcome": (
                    "waiting" if proposal is None else "preempt" if proposal.victims else "proposed"
                ),
                "pod_id": proposal.pod_id if proposal is not None else None,
                "victims": [r for _, r in proposal.victims] if proposal is not None else [],
                "price": round(cleared.price, 4),
                "energy": round(cleared.energy, 4),
                "reason": proposal.reason if proposal is not None else cleared.reason,
                "command_id": proposal.command_id if proposal is not None else None,
            }
        )
