"""Victim selection: only strictly lower priorities; fewest victims, then lowest priorities,
then the most recently started; none when even all eligible victims leave too little room."""

from __future__ import annotations

from services.scheduler.policies import Need, Offer
from services.scheduler.preemption import Candidate, choose_preemption, victims_on_pod


def pod(pod_id: str = "p1", free: int = 0, slots: int = 10, zone: str = "default") -> Offer:
    return Offer(pod_id, True, free, 10**9, slots, zone, {}, 1.0, 1024, 10**9, 10)


def victim(name: str, priority: int, memory: int, placed_seq: int) -> Candidate:
    return Candidate("agent-" + name, name, priority, memory, 1, placed_seq)


NEED = Need("vip", "vip-0", 256, 1, priority=100)


def names(found: tuple[Candidate, ...] | None) -> list[str] | None:
    return None if found is None else sorted(c.replica_id for c in found)


def test_fewest_victims_first() -> None:
    placed = [victim("small-a", 0, 128, 1), victim("small-b", 0, 128, 2), victim("big", 50, 256, 3)]
    # Two victims of priority 0 or one of priority 50: one victim wins.
    assert names(victims_on_pod(NEED, pod(), placed)) == ["big"]


def test_lowest_priorities_among_equally_many() -> None:
    placed = [victim("p10", 10, 256, 1), victim("p-5", -5, 256, 2), victim("p0", 0, 256, 3)]
    assert names(victims_on_pod(NEED, pod(), placed)) == ["p-5"]


def test_most_recently_started_among_equal_priorities() -> None:
    placed = [victim("old", 0, 256, 5), victim("new", 0, 256, 9), victim("mid", 0, 256, 7)]
    assert names(victims_on_pod(NEED, pod(), placed)) == ["new"]


def test_never_for_an_equal_or_lower_priority() -> None:
    placed = [victim("same", 100, 256, 1), victim("higher", 500, 256, 2)]
    assert victims_on_pod(NEED, pod(), placed) is None
    assert choose_preemption(NEED, [(pod(), placed)]) is None


def test_none_when_even_all_eligible_do_not_make_room() -> None:
    placed = [victim("a", 0, 64, 1), victim("b", 0, 64, 2), victim("vip-like", 200, 512, 3)]
    assert victims_on_pod(NEED, pod(free=64), placed) is None


def test_free_room_counts_towards_the_need() -> None:
    # With 128 MB free one 128 MB victim is enough; among single victims the lowest priority
    # goes first, and without it the one that exactly covers the gap.
    placed = [victim("a", 0, 128, 3), victim("b", -1, 512, 2), victim("c", 0, 64, 4)]
    assert names(victims_on_pod(NEED, pod(free=128), placed)) == ["b"]
    placed = [victim("a", 0, 128, 3), victim("c", 0, 64, 4)]
    assert names(victims_on_pod(NEED, pod(free=128), placed)) == ["a"]
    assert victims_on_pod(NEED, pod(free=256), placed) == ()


def test_a_slot_is_needed_too() -> None:
    placed = [victim("a", 0, 64, 1), victim("b", 0, 64, 2)]
    assert names(victims_on_pod(NEED, pod(free=4096, slots=0), placed)) == ["b"]


def test_the_pod_needing_the_cheapest_set_wins() -> None:
    two = [victim("x", 0, 128, 1), victim("y", 0, 128, 2)]
    one = [victim("z", 0, 256, 3)]
    found = choose_preemption(NEED, [(pod("p1"), two), (pod("p2"), one)])
    assert found is not None
    assert found.pod_id == "p2"
    assert names(found.victims) == ["z"]
    assert "priority 100" in found.reason


def test_constraints_and_readiness_rule_pods_out() -> None:
    placed = [victim("a", 0, 256, 1)]
    eu_only = Need("vip", "vip-0", 256, 1, priority=100, zones=("eu",))
    assert choose_preemption(eu_only, [(pod(zone="us"), placed)]) is None
    lost = Offer("p1", False, 0, 10**9, 10)
    assert choose_preemption(NEED, [(lost, placed)]) is None


def test_large_pods_fall_back_to_greedy_with_reprieve() -> None:
    placed = [victim(f"v{i}", i % 3, 16, i) for i in range(60)]
    found = victims_on_pod(NEED, pod(), placed)
    assert found is not None
    assert sum(v.memory_mb for v in found) >= 256
    # Greedy takes priority 0 first, newest first, and gives back what it does not need.
    assert len(found) == 16
    assert {v.priority for v in found} == {0}


def brute_force(
    need: Need, pods: list[tuple[Offer, list[Candidate]]]
) -> tuple[str, list[str]] | None:
    """Every subset of every pod, ranked by the documented key: (count, sum of priorities,
    newest first), then pod id."""
    import itertools

    best: tuple[object, ...] | None = None
    for offer, placed in pods:
        eligible = [c for c in placed if c.priority < need.priority]
        for size in range(1, len(eligible) + 1):
            for subset in itertools.combinations(eligible, size):
                room = (
                    offer.free_memory_mb + sum(c.memory_mb for c in subset) >= need.memory_mb
                    and offer.free_fuel_per_s + sum(c.fuel_per_s for c in subset) >= need.fuel_per_s
                    and offer.free_slots + size >= 1
                )
                if not room:
                    continue
                key = (
                    size,
                    sum(c.priority for c in subset),
                    tuple(sorted(-c.placed_seq for c in subset)),
                    offer.pod_id,
                )
                if best is None or key < best[0]:  # type: ignore[operator]
                    best = (key, offer.pod_id, sorted(c.replica_id for c in subset))
    return None if best is None else (best[1], best[2])  # type: ignore[return-value]


def test_the_search_finds_exactly_what_brute_force_finds() -> None:
    import random

    rng = random.Random(5)
    for _ in range(300):
        need = Need("vip", "vip-0", rng.choice((64, 128, 256, 512)), 1, priority=rng.randint(0, 5))
        pods = []
        # Stream sequences are unique, so no two victims started at the same time.
        seqs = iter(rng.sample(range(1, 1000), 40))
        for p in range(rng.randint(1, 4)):
            placed = [
                victim(
                    f"r{p}-{j}",
                    rng.randint(0, 6),
                    rng.choice((32, 64, 128, 256)),
                    next(seqs),
                )
                for j in range(rng.randint(0, 7))
            ]
            free = rng.choice((0, 0, 32, 64))
            pods.append((pod(f"p{p}", free=free, slots=rng.choice((0, 5))), placed))
        found = choose_preemption(need, pods)
        expected = brute_force(need, pods)
        # Where the pod has room already, the clearing places it: neither side preempts there.
        if any(victims_on_pod(need, o, c) == () for o, c in pods):
            continue
        assert (None if found is None else (found.pod_id, names(found.victims))) == expected
