"""Priority preemption: which placed replicas to move off a pod so a waiting one fits there.

Only replicas of a **strictly lower** priority than the waiting one are eligible; nothing is
ever preempted for an equal or lower priority (the Hive checks this again). Among the sets of
eligible victims on one pod that free enough memory, fuel/s and one slot, the cheapest is the one
that minimises, in this order:

1. the number of victims (fewest disrupted replicas),
2. the sum of their priorities (lowest priorities go first),
3. how long they have run: the set whose victims started most recently (largest sequence of
   their `replica_scheduled`, compared newest first) loses the least work.

Across pods the same key decides, then the pod id. The search is exact: sets are enumerated by
size, smallest first (from the fewest of the largest victims that could cover the gap), and a
pod is left as soon as it cannot beat the best set found on another pod, as long as a pod has
at most `EXACT_BUDGET` sets of one size to look at (`tests/scheduler/test_preemption.py`
checks it against brute force);
beyond that (many small victims on one pod) a greedy pass takes victims in the order of the key
(lowest priority, newest first) until the replica fits, then gives back every victim it can do
without. A pod where even all eligible victims do not make room yields nothing, and so does a
pod that breaks the replica's constraints or is not ready.

Pure: the scheduler passes in the pods and their replicas as it sees them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from services.scheduler.policies import Need, Offer

#: Sets of one size examined per pod before the greedy pass takes over.
EXACT_BUDGET = 2_000


@dataclass(frozen=True, slots=True)
class Candidate:
    """A replica placed on a pod, as preemption sees it."""

    agent_id: str
    replica_id: str
    priority: int
    memory_mb: int
    fuel_per_s: int
    #: Sequence of its `replica_scheduled`: larger started more recently.
    placed_seq: int


@dataclass(frozen=True, slots=True)
class Preemption:
    pod_id: str
    victims: tuple[Candidate, ...]
    reason: str


Key = tuple[int, int, tuple[int, ...]]
_Enough = Callable[[Sequence[Candidate]], bool]


def _key(victims: Sequence[Candidate]) -> Key:
    newest_first = tuple(sorted(-v.placed_seq for v in victims))
    return (len(victims), sum(v.priority for v in victims), newest_first)


def _allowed(need: Need, offer: Offer) -> bool:
    selector = dict(need.node_selector)
    return (
        offer.ready
        and all(offer.labels.get(k) == v for k, v in selector.items())
        and (not need.zones or offer.zone in need.zones)
        and offer.zone not in need.avoid_zones
    )


def victims_on_pod(
    need: Need, offer: Offer, placed: Iterable[Candidate], beat: Key | None = None
) -> tuple[Candidate, ...] | None:
    """The cheapest victims on this pod that make room for `need` (see the module doc).

    An empty tuple means it fits without preempting anyone; None means it cannot fit here,
    or (with `beat`, the best key a search across pods found so far) not with a set that
    could beat it: no more victims, and as many only with no higher sum of priorities.
    """
    if not _allowed(need, offer):
        return None
    memory = need.memory_mb - offer.free_memory_mb
    fuel = need.fuel_per_s - offer.free_fuel_per_s
    slots = 1 - offer.free_slots
    if memory <= 0 and fuel <= 0 and slots <= 0:
        return ()
    eligible = sorted(
        (c for c in placed if c.priority < need.priority),
        key=lambda c: (c.priority, -c.placed_seq, c.replica_id),
    )

    def enough(victims: Sequence[Candidate]) -> bool:
        return (
            sum(v.memory_mb for v in victims) >= memory
            and sum(v.fuel_per_s for v in victims) >= fuel
            and len(victims) >= slots
        )

    if not eligible or not enough(eligible):
        return None
    largest = len(eligible) if beat is None else min(len(eligible), beat[0])
    # No set smaller than what the biggest victims need can be enough: start there.
    smallest = max(
        _fewest([c.memory_mb for c in eligible], memory),
        _fewest([c.fuel_per_s for c in eligible], fuel),
        slots,
        1,
    )
    for size in range(smallest, largest + 1):
        # `eligible` is sorted by priority: its first `size` have the lowest possible sum.
        if beat is not None and size == beat[0] and _key(eligible[:size])[1] > beat[1]:
            return None
        if math.comb(len(eligible), size) > EXACT_BUDGET:
            greedy = _greedy(eligible, enough)
            return greedy if beat is None or len(greedy) <= beat[0] else None
        found = [s for s in itertools.combinations(eligible, size) if enough(s)]
        if found:
            return min(found, key=_key)
    return None


def _fewest(sizes: list[int], deficit: int) -> int:
    """How many of the largest `sizes` it takes to cover `deficit` (0 when nothing is short)."""
    if deficit <= 0:
        return 0
    total = 0
    for count, size in enumerate(sorted(sizes, reverse=True), start=1):
        total += size
        if total >= deficit:
            return count
    return len(sizes) + 1


def _greedy(eligible: list[Candidate], enough: _Enough) -> tuple[Candidate, ...]:
    taken: list[Candidate] = []
    for candidate in eligible:
        taken.append(candidate)
        if enough(taken):
            break
    # Give back what is not needed, highest priority and longest running first.
    for candidate in sorted(taken, key=lambda c: (-c.priority, c.placed_seq)):
        rest = [v for v in taken if v is not candidate]
        if enough(rest):
            taken = rest
    return tuple(taken)


def choose_preemption(
    need: Need, pods: Iterable[tuple[Offer, Sequence[Candidate]]]
) -> Preemption | None:
    """The pod and victims that preempt least for `need`, or None when no pod can make room."""
    best: tuple[Key, str, tuple[Candidate, ...]] | None = None
    for offer, placed in pods:
        victims = victims_on_pod(need, offer, placed, None if best is None else best[0])
        if not victims:
            continue  # None (cannot fit) or () (fits as is: the clearing places it)
        ranked = (_key(victims), offer.pod_id, victims)
        if best is None or ranked[:2] < best[:2]:
            best = ranked
    if best is None:
        return None
    _, pod_id, victims = best
    listed = ", ".join(f"{v.replica_id} (priority {v.priority})" for v in victims)
    return Preemption(
        pod_id,
        victims,
        f"preemption: priority {need.priority} fits nowhere; {len(victims)} lower-priority "
        f"victim(s) on {pod_id}: {listed}"[:500],
    )
