"""What a placement means: the rules every fold of SWARM_EVENTS applies to replicas and pods.

The Hive folds them into its state (`evolve.py`), the scheduler into the view it proposes
placements from (`services/scheduler/view.py`) and each pod into the view of what it should run
(`runtime/podview.py`). The Hive re-checks every proposal and every report against its own
accounting, so a projection that counted differently would keep proposing placements the Hive
refuses, or run replicas the Hive no longer holds there; the rules are therefore written once,
here, and imported by all three:

* a replica should run on its pod while scheduled, starting or running (`RUN`), and holds its
  resources there while in one of those or stopping (`PLACED`); requested, crashed, failed and
  stopped replicas hold nothing;
* a replica's size is that of its version's spec, the agent's current spec if the version is
  unknown (`size_of`);
* a pod's free capacity is its capacity minus the sizes of the replicas it holds, and its free
  slots are its slots minus their number (`reserve`, `release`, `free`); a replica fits where
  its memory, its fuel/s and one slot are all free (`fits`);
* a replica that leaves `PLACED` gives its reservation back (`release`); so `replica_requested`
  for a placed replica means it was moved off its pod (its pod was lost, or it was preempted);
* `replica_stopping` for a replica that holds nothing stops it at once (`stopping_phase`);
* `pod_registered` adds or updates a pod and makes it ready (keeping what it holds: its replicas
  were not moved), `pod_lost` marks it lost (`PodStatus`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol, TypeVar

from schemas.specs import Capacity

ReplicaPhase = Literal[
    "requested", "scheduled", "starting", "running", "crashed", "failed", "stopping", "stopped"
]
PodStatus = Literal["ready", "lost"]

#: Phases in which a replica should be running on its pod.
RUN: frozenset[str] = frozenset({"scheduled", "starting", "running"})
#: Phases in which a replica holds resources on its pod.
PLACED: frozenset[str] = RUN | {"stopping"}
#: Phases a replica never leaves: it is never placed again.
TERMINAL: frozenset[str] = frozenset({"stopped", "failed"})

#: (agent id, replica id): how a pod names the replicas it holds.
ReplicaKey = tuple[str, str]


class Size(Protocol):
    """What one replica reserves on its pod (`schemas.specs.Resources`, or a copy of its
    numbers)."""

    @property
    def memory_mb(self) -> int: ...

    @property
    def fuel_per_s(self) -> int: ...


class Holder(Protocol):
    """A pod as a fold keeps it: its capacity and what it holds, kept current by `reserve` and
    `release` so that free capacity is O(1)."""

    capacity: Capacity
    used_memory_mb: int
    used_fuel_per_s: int
    replicas: set[ReplicaKey]


Spec = TypeVar("Spec")


def holds_resources(phase: str) -> bool:
    """True while a replica in `phase` holds its resources on its pod."""
    return phase in PLACED


def size_of(versions: Mapping[str, Spec], version: str, current: Spec) -> Spec:
    """The spec (or size) a replica of `version` is counted with: its version's, else the
    agent's current one."""
    return versions.get(version, current)


def stopping_phase(phase: str) -> ReplicaPhase:
    """Where `replica_stopping` takes a replica in `phase`: one that holds nothing (never
    placed, or crashed and waiting) runs nowhere, so it is stopped at once."""
    return "stopping" if phase in PLACED else "stopped"


def reserve(pod: Holder, key: ReplicaKey, size: Size) -> None:
    """The replica `key` was placed on `pod` (`replica_scheduled`)."""
    pod.replicas.add(key)
    pod.used_memory_mb += size.memory_mb
    pod.used_fuel_per_s += size.fuel_per_s


def release(pod: Holder, key: ReplicaKey, size: Size) -> None:
    """Give the replica's reservation back to its pod; nothing if the pod does not hold it."""
    if key in pod.replicas:
        pod.replicas.discard(key)
        pod.used_memory_mb -= size.memory_mb
        pod.used_fuel_per_s -= size.fuel_per_s


def free(pod: Holder) -> tuple[int, int, int]:
    """(memory MB, fuel/s, slots) still free on `pod`."""
    return (
        pod.capacity.memory_mb - pod.used_memory_mb,
        pod.capacity.fuel_per_s - pod.used_fuel_per_s,
        pod.capacity.slots - len(pod.replicas),
    )


def fits(size: Size, free: tuple[int, int, int]) -> bool:
    """Whether a replica of `size` fits in `free` (memory MB, fuel/s, slots, as `free` returns):
    its memory, its fuel/s and one slot must all be free."""
    memory, fuel, slots = free
    return size.memory_mb <= memory and size.fuel_per_s <= fuel and slots >= 1
