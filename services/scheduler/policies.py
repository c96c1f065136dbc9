"""Placement policies: given one replica's need and the pods on offer, pick a pod (or none).

A policy is a small pure object behind the `Policy` protocol, so the scheduler's loop, in-flight
accounting and tests stay the same whichever policy runs. `MostFreeCapacity` is the baseline
that later policies (the market) are measured against; it stays selectable by name
(`SWARM_SCHEDULER_POLICY=most-free`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Need:
    """What the replica to place asks for."""

    agent_id: str
    replica_id: str
    memory_mb: int
    fuel_per_s: int
    priority: int = 0


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

    def fits(self, need: Need) -> bool:
        """The Hive's capacity check: memory, fuel/s and one slot must all be free."""
        return (
            self.ready
            and need.memory_mb <= self.free_memory_mb
            and need.fuel_per_s <= self.free_fuel_per_s
            and self.free_slots >= 1
        )

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
        )


@dataclass(frozen=True, slots=True)
class Choice:
    pod_id: str
    #: Why this pod, for the audit log (carried into `replica_scheduled`).
    reason: str


class Policy(Protocol):
    """Chooses a pod for one replica; must be deterministic for the same inputs."""

    @property
    def name(self) -> str:
        """Recorded as the `policy` of every proposal and placement (at most 64 characters)."""
        ...

    def choose(self, need: Need, pods: Sequence[Offer]) -> Choice | None:
        """A ready pod where `need` fits, or None when it fits nowhere."""
        ...


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


#: Policies selectable by name (`SWARM_SCHEDULER_POLICY`).
POLICIES: Mapping[str, Callable[[], Policy]] = {"most-free": MostFreeCapacity}


def policy_named(name: str) -> Policy:
    factory = POLICIES.get(name)
    if factory is None:
        raise ValueError(f"unknown placement policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    return factory()
