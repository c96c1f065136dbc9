"""Placement policies: given one replica's need and the pods on offer, pick a pod (or none).

A policy is a small pure object behind the `Policy` protocol, so the scheduler's loop, in-flight
accounting and tests stay the same whichever policy runs. `MostFreeCapacity` is the baseline
that the market was first measured against; `catalog.py` selects policies by name
(`SWARM_SCHEDULER_POLICY=market|first-fit|most-free`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from swarm.domain import placement


@dataclass(frozen=True, slots=True)
class Need:
    """What the replica to place asks for."""

    agent_id: str
    replica_id: str
    memory_mb: int
    fuel_per_s: int
    priority: int = 0
    #: The bid: most paid per resource unit (None: no cap). See `services/scheduler/market.py`.
    max_price: float | None = None
    #: Hard constraints: labels the pod must carry, zones it must (not) be in.
    node_selector: tuple[tuple[str, str], ...] = ()
    zones: tuple[str, ...] = ()
    avoid_zones: tuple[str, ...] = ()
    #: Age of the request (stream sequence of its `replica_requested`): older clears first.
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Offer:
    """A pod as a policy sees it: what is free once in-flight proposals are deducted."""

    pod_id: str
    ready: bool
    free_memory_mb: int
    free_fuel_per_s: int
    free_slots: int
    zone: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    energy_cost: float = 1.0
    #: The pod's whole capacity (0: unknown), for utilisation-based prices.
    capacity_memory_mb: int = 0
    capacity_fuel_per_s: int = 0
    capacity_slots: int = 0

    def fits(self, need: Need) -> bool:
        """The Hive's capacity check (`placement.fits`), on a pod that takes replicas."""
        free = (self.free_memory_mb, self.free_fuel_per_s, self.free_slots)
        return self.ready and placement.fits(need, free)

    def minus(self, need: Need) -> Offer:
        """The offer left once `need` is placed here."""
        return Offer(
            self.pod_id,
            self.ready,
            self.free_memory_mb - need.memory_mb,
            self.free_fuel_per_s - need.fuel_per_s,
            self.free_slots - 1,
            self.zone,
            self.labels,
            self.energy_cost,
            self.capacity_memory_mb,
            self.capacity_fuel_per_s,
            self.capacity_slots,
        )


@dataclass(frozen=True, slots=True)
class Choice:
    pod_id: str
    #: Why this pod, for the audit log (carried into `replica_scheduled`).
    reason: str


@dataclass(frozen=True, slots=True)
class Pricing:
    """How offers are priced and scored (`SWARM_SCHEDULER_*` settings; see `market.py`)."""

    base_price: float = 1.0
    #: k in base * (1 + k u^2): a full pod costs (1 + k) times an empty one.
    slope: float = 3.0
    #: λ: weight of a pod's energy cost per unit against its price per unit.
    energy_weight: float = 1.0


#: no_fit: no ready pod that meets the constraints has room; constrained: no pod meets them;
#: priced_out: it fits, but only at prices above its bid.
WaitKind = Literal["no_fit", "constrained", "priced_out"]
NO_FIT = "fits on no ready pod"


@dataclass(frozen=True, slots=True)
class Cleared:
    """One request's result in a clearing: where it goes (None: it waits) and why."""

    need: Need
    choice: Choice | None
    #: What the placement costs (price per unit x units) and the energy it uses, when known.
    price: float = 0.0
    energy: float = 0.0
    #: Why it waits when `choice` is None.
    reason: str = ""
    #: The kind of wait: only `no_fit` (no ready pod has room) may lead to a preemption.
    wait: WaitKind | None = None


class Policy(Protocol):
    """Chooses pods for replicas; must be deterministic for the same inputs."""

    @property
    def name(self) -> str:
        """Recorded as the `policy` of every proposal and placement (at most 64 characters)."""
        ...

    def choose(self, need: Need, pods: Sequence[Offer]) -> Choice | None:
        """A ready pod where `need` fits, or None when it fits nowhere."""
        ...

    def clear(self, needs: Sequence[Need], pods: Sequence[Offer], limit: int) -> list[Cleared]:
        """Place `needs` one after another (each sees what the earlier ones took), at most
        `limit` of them; one result per request considered, in the order considered."""
        ...


def clear_one_by_one(
    policy: Policy, needs: Sequence[Need], pods: Sequence[Offer], limit: int
) -> list[Cleared]:
    """`clear` for a policy that only knows `choose`: oldest request first."""
    offers = {p.pod_id: p for p in pods}
    out: list[Cleared] = []
    placed = 0
    for need in sorted(needs, key=lambda n: n.seq):
        if placed >= limit:
            break
        choice = policy.choose(need, list(offers.values()))
        offer = offers.get(choice.pod_id) if choice is not None else None
        if choice is None or offer is None or not offer.fits(need):
            out.append(Cleared(need, None, reason=NO_FIT, wait="no_fit"))
            continue
        offers[offer.pod_id] = offer.minus(need)
        placed += 1
        out.append(Cleared(need, choice, energy=offer.energy_cost))
    return out


@dataclass(frozen=True, slots=True)
class MostFreeCapacity:
    """Spread load: the ready pod with the most free memory where the replica fits.

    Ties go to the pod with the most free slots, then to the smallest pod id, so the same view
    always yields the same placement (replays and restarts propose what was proposed before).
    """

    name: str = "most-free"

    def choose(self, need: Need, pods: Sequence[Offer]) -> Choice | None:
        fitting = [p for p in pods if p.fits(need)]
        if not fitting:
            return None
        best = min(fitting, key=lambda p: (-p.free_memory_mb, -p.free_slots, p.pod_id))
        return Choice(
            best.pod_id,
            f"most free memory: {best.free_memory_mb} MB and {best.free_slots} slots free on "
            f"{best.pod_id} ({len(fitting)} of {len(pods)} pods fit)",
        )

    def clear(self, needs: Sequence[Need], pods: Sequence[Offer], limit: int) -> list[Cleared]:
        return clear_one_by_one(self, needs, pods, limit)
