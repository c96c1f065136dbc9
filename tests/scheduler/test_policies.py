"""The baseline policy on hand-made offers: most free memory, deterministic tie-breaks."""

from __future__ import annotations

import pytest

from services.scheduler.catalog import policy_named
from services.scheduler.config import SchedulerSettings
from services.scheduler.policies import MostFreeCapacity, Need, Offer

NEED = Need(agent_id="a", replica_id="a-0", memory_mb=64, fuel_per_s=100)


def offer(
    pod_id: str, memory: int = 1024, slots: int = 10, fuel: int = 10_000, ready: bool = True
) -> Offer:
    return Offer(pod_id, ready, memory, fuel, slots)


def choose(*offers: Offer) -> str | None:
    choice = MostFreeCapacity().choose(NEED, list(offers))
    return choice.pod_id if choice else None


def test_picks_the_pod_with_the_most_free_memory() -> None:
    assert choose(offer("p1", 1024), offer("p2", 4096), offer("p3", 2048)) == "p2"


def test_ties_go_to_most_free_slots_then_smallest_pod_id() -> None:
    assert choose(offer("p1", 1024, slots=3), offer("p2", 1024, slots=9)) == "p2"
    assert (
        choose(offer("p9", 1024, slots=5), offer("p2", 1024, slots=5), offer("p5", 1024, slots=5))
        == "p2"
    )
    # Order of the offers does not matter.
    assert choose(offer("p5", 1024, slots=5), offer("p2", 1024, slots=5)) == "p2"


def test_lost_pods_and_pods_without_room_are_never_chosen() -> None:
    assert choose(offer("lost", 10_000, ready=False), offer("small", 128)) == "small"
    assert choose(offer("lost", 10_000, ready=False)) is None
    assert (
        choose(offer("no-memory", 63), offer("no-fuel", fuel=99), offer("no-slot", slots=0)) is None
    )
    # Exactly enough is enough.
    assert choose(offer("exact", 64, slots=1, fuel=100)) == "exact"


def test_reason_says_why() -> None:
    choice = MostFreeCapacity().choose(NEED, [offer("p1", 1024), offer("p2", 10, ready=False)])
    assert choice is not None
    assert "1024 MB" in choice.reason
    assert "1 of 2 pods fit" in choice.reason


def test_policy_is_selected_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(policy_named("most-free"), MostFreeCapacity)
    assert policy_named("most-free").name == "most-free"
    with pytest.raises(ValueError, match="unknown placement policy"):
        policy_named("cheapest")
    monkeypatch.setenv("SWARM_SCHEDULER_POLICY", "most-free")
    assert SchedulerSettings().policy == "most-free"
    monkeypatch.setenv("SWARM_SCHEDULER_POLICY", "nope")
    with pytest.raises(ValueError, match="unknown placement policy"):
        SchedulerSettings()
