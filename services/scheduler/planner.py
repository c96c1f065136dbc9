"""The scheduler's pure core: fold the log, then plan proposals for the replicas that wait.

No I/O and no clock: the service passes the time in, so the same events and times always give
the same proposals (tests drive it directly, and a restarted scheduler re-derives the same ids).

Retries: a rejected proposal releases what it held and its replica waits `retry_backoff`
seconds, doubling with each rejection of the same request up to `max_backoff`, before it is
proposed again under a new id. A replica that fits on no ready pod stays waiting and is reported
once (until it is placed or fits again), not on every pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas import CommandRejected, Envelope, commands
from services.scheduler.policies import Need, Offer, Policy
from services.scheduler.proposals import InFlight, Proposal, parse_proposal_id, proposal_id
from services.scheduler.view import HANDLED, ClusterView, ReplicaKey, Request

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


class Planner:
    def __init__(
        self, policy: Policy, *, retry_backoff: float = 0.5, max_backoff: float = 8.0
    ) -> None:
        self.policy = policy
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self.view = ClusterView()
        self.in_flight = InFlight()
        #: Rejections read per request sequence: the attempt number of the next proposal.
        self._attempts: dict[int, int] = {}
        self._retry_at: dict[ReplicaKey, float] = {}
        self._unplaceable: set[ReplicaKey] = set()
        #: Something changed that may let a waiting replica be placed.
        self._dirty = False

    # -- folding ----------------------------------------------------------------------------------

    def apply(self, envelope: Envelope[Any], seq: int, now: float) -> Retry | None:
        """Fold the event at `seq`; returns a `Retry` when it rejects one of our proposals."""
        if seq <= self.view.applied_seq:
            return None
        retry = None
        if isinstance(envelope.data, CommandRejected):
            retry = self._rejected(envelope.data, now)
        for request in self.view.fold(envelope, seq):
            self._ended(request)
        if type(envelope.data) in HANDLED:
            self._dirty = True
        return retry

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
        if outcome.command_type != commands.ProposePlacement.TYPE:
            return None
        parsed = parse_proposal_id(outcome.command_id)
        if parsed is None:
            return None  # someone else's proposal
        request_seq, attempt = parsed
        proposal = self.in_flight.pop(outcome.command_id)
        key = self.view.requests.get(request_seq)
        if key is None:
            # That request no longer waits: nothing to retry. (While replaying after a restart
            # this also skips rejections of requests that were placed later.)
            return Retry(proposal, outcome.command_id, outcome.rule, outcome.reason, None)
        # Attempts come from the log, not from memory, so a restarted scheduler continues the
        # numbering instead of re-sending an id JetStream would drop as a duplicate.
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
            )
        return offers

    def plan(self, now: float, limit: int = 512) -> Plan:
        """Proposals for waiting replicas, oldest request first, at most `limit` of them.

        Each proposal is entered in flight before the next replica is planned, so one pass
        never places more on a pod than the pod has free.
        """
        self._dirty = False
        plan = Plan()
        offers = self.offers()
        for key, request_seq in self.view.waiting.items():
            if len(plan.proposals) >= limit:
                self._dirty = True  # more next time
                break
            if key in self.in_flight:
                continue
            retry_at = self._retry_at.get(key)
            if retry_at is not None:
                if retry_at > now:
                    continue
                del self._retry_at[key]
            demand = self.view.demand(key)
            need = Need(key[0], key[1], demand.memory_mb, demand.fuel_per_s, demand.priority)
            choice = self.policy.choose(need, list(offers.values()))
            offer = offers.get(choice.pod_id) if choice is not None else None
            # A policy cannot make the scheduler over-commit: a choice that does not fit is none.
            if choice is None or offer is None or not offer.fits(need):
                if key not in self._unplaceable:
                    self._unplaceable.add(key)
                    plan.unplaceable.append(need)
                continue
            self._unplaceable.discard(key)
            proposal = Proposal(
                proposal_id(request_seq, self._attempts.get(request_seq, 0), key[1]),
                key[0],
                key[1],
                request_seq,
                choice.pod_id,
                need.memory_mb,
                need.fuel_per_s,
                choice.reason[:_MAX_REASON],
            )
            self.in_flight.add(proposal)
            offers[choice.pod_id] = offer.minus(need)
            plan.proposals.append(proposal)
        return plan
