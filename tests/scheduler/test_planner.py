"""The pure core: in-flight accounting, retries, deterministic ids, one report per stuck replica."""

from __future__ import annotations

from collections import Counter

import pytest

from schemas import names
from services.scheduler.planner import Planner
from services.scheduler.policies import MostFreeCapacity
from services.scheduler.proposals import parse_proposal_id, proposal_id
from swarm.kernel.ids import IdKey
from tests.helpers.history import IDS, History


def burst(h: History, n: int) -> None:
    for i in range(n):
        h.deploy(f"A{i:03d}", memory=64)


def test_a_burst_is_spread_and_never_over_commits() -> None:
    h = History()
    # Room for 100 + 67 + 34 = 201 replicas of 64 MB: 200 fit only if spread.
    h.pod("p1", memory=64 * 100, slots=1000)
    h.pod("p2", memory=64 * 67, slots=1000)
    h.pod("p3", memory=64 * 34, slots=1000)
    burst(h, 200)
    plan = h.planner.plan(h.now, limit=1000)
    assert len(plan.proposals) == 200
    assert plan.unplaceable == []
    per_pod = Counter(p.pod_id for p in plan.proposals)
    assert per_pod["p1"] <= 100
    assert per_pod["p2"] <= 67
    assert per_pod["p3"] <= 34
    # What is in flight is held against the pods: nothing is left to propose.
    assert all(o.free_memory_mb >= 0 for o in h.planner.offers().values())
    assert h.planner.plan(h.now).proposals == []
    # The Hive commits them all: the holds turn into real usage, none double counted.
    h.accept()
    assert len(h.planner.in_flight) == 0
    for pod in h.planner.view.pods.values():
        assert min(pod.free()) >= 0
    assert sum(p.free()[0] for p in h.planner.view.pods.values()) == 64


def test_the_limit_splits_a_burst_into_batches() -> None:
    h = History()
    h.pod("p1", memory=64 * 300, slots=300)
    burst(h, 250)
    first = h.planner.plan(h.now, limit=100)
    assert len(first.proposals) == 100
    assert h.planner.wants_to_plan(h.now)
    second = h.planner.plan(h.now, limit=1000)
    assert len(second.proposals) == 150
    assert {p.replica_id for p in first.proposals}.isdisjoint(
        p.replica_id for p in second.proposals
    )


def test_a_replica_that_fits_nowhere_waits_and_is_reported_once() -> None:
    h = History()
    h.pod("p1", memory=100)
    h.deploy("BIG", memory=500)
    first = h.planner.plan(h.now)
    assert first.proposals == []
    assert [n.replica_id for n in first.unplaceable] == ["BIG-0"]
    h.deploy("SMALL", memory=50)  # something changed: plan again, but do not report BIG again
    second = h.planner.plan(h.now)
    assert [p.replica_id for p in second.proposals] == ["SMALL-0"]
    assert second.unplaceable == []
    assert not h.planner.wants_to_plan(h.now)
    # Room appears: it is placed.
    h.pod("p2", memory=1000)
    assert [p.pod_id for p in h.planner.plan(h.now).proposals] == ["p2"]


def test_no_second_proposal_while_one_is_pending() -> None:
    h = History()
    h.pod("p1")
    h.deploy("A")
    assert len(h.planner.plan(h.now).proposals) == 1
    h.pod("p2", memory=8192)  # a better pod appears, but the proposal is still out
    assert h.planner.plan(h.now).proposals == []


def test_rejection_releases_the_hold_and_retries_later_under_a_new_id() -> None:
    h = History()
    h.pod("p1", memory=64, slots=1)
    h.deploy("A")
    request_seq = h.seq
    (sent,) = h.planner.plan(h.now).proposals
    assert sent.command_id == proposal_id(request_seq, 0, "A-0", IDS)
    assert h.planner.offers()["p1"].free_slots == 0
    retry = h.rejected(sent.command_id)
    assert retry is not None
    assert retry.proposal == sent
    assert retry.rule == "capacity"
    assert retry.at == pytest.approx(h.now + 0.5)
    assert h.planner.offers()["p1"].free_slots == 1
    assert h.planner.plan(h.now + 0.4).proposals == []  # backing off
    (again,) = h.planner.plan(h.now + 0.6).proposals
    assert again.command_id == proposal_id(request_seq, 1, "A-0", IDS)
    # A second rejection doubles the wait.
    retry = h.rejected(again.command_id)
    assert retry is not None
    assert retry.at == pytest.approx(h.now + 1.0)


def test_outcomes_of_other_commands_are_ignored() -> None:
    h = History()
    h.pod("p1")
    h.deploy("A")
    h.planner.plan(h.now)
    assert h.rejected("01HZZZZZZZZZZZZZZZZZZZZZZZ") is None
    assert h.rejected("place-999-0-gone") is not None  # ours, but that request no longer waits
    assert len(h.planner.in_flight) == 1


def test_a_foreign_rejection_of_a_guessed_id_is_ignored() -> None:
    """Anyone may write an outcome; one for an id the scheduler did not make counts nothing."""
    h = History()
    h.pod("p1")
    h.deploy("A")
    request_seq = h.seq
    (sent,) = h.planner.plan(h.now).proposals
    # The guessable id of the old scheme, and one with our key's shape but another key.
    for forged in (
        f"place-{request_seq}-0-A-0",
        proposal_id(request_seq, 0, "A-0", IdKey.from_secret("attacker-secret-xyz", "scheduler")),
    ):
        assert h.rejected(forged) is None
    assert len(h.planner.in_flight) == 1
    assert h.planner.plan(h.now + 10).proposals == []  # nothing to retry: still in flight
    assert h.rejected(sent.command_id) is not None


def test_a_restarted_planner_derives_the_same_ids_from_the_log() -> None:
    h = History()
    h.pod("p1", memory=256)
    h.pod("p2", memory=128)
    h.deploy("A", replicas=3)
    plan = h.planner.plan(h.now)
    h.rejected(plan.proposals[0].command_id)
    h.now += 1
    before = {p.replica_id: p.command_id for p in h.planner.plan(h.now).proposals}
    before.update({p.replica_id: p.command_id for p in plan.proposals[1:]})
    # A scheduler killed now and started again folds the same log...
    restarted = h.replay_into(Planner(MostFreeCapacity(), ids=IDS))
    # (Rejections read while replaying impose their backoff again, once.)
    after = {p.replica_id: p.command_id for p in restarted.plan(h.now + 1).proposals}
    # ...and re-sends exactly the ids already sent, which JetStream drops as duplicates.
    assert after == before
    assert parse_proposal_id(after["A-0"])[1] == 1  # type: ignore[index]


def test_send_failure_releases_holds_and_retries_the_same_ids() -> None:
    h = History()
    h.pod("p1")
    h.deploy("A", replicas=2)
    plan = h.planner.plan(h.now)
    h.planner.abandon(plan.proposals, h.now)
    assert len(h.planner.in_flight) == 0
    assert h.planner.plan(h.now).proposals == []
    again = h.planner.plan(h.now + 1).proposals
    assert [p.command_id for p in again] == [p.command_id for p in plan.proposals]


def test_a_replica_stopped_while_its_proposal_is_out_releases_the_hold() -> None:
    h = History()
    h.pod("p1", memory=64, slots=1)
    h.deploy("A")
    h.planner.plan(h.now)
    h.stopping("A", "A-0")
    assert len(h.planner.in_flight) == 0
    assert h.planner.offers()["p1"].free_slots == 1


def test_proposal_ids_are_tokens_and_parse_back() -> None:
    long_replica = "R" * 60 + "-12"
    other = IdKey.from_secret("another-secret-456", "scheduler")
    for seq, attempt, replica in ((1, 0, "A-0"), (987654321, 42, long_replica)):
        command_id = proposal_id(seq, attempt, replica, IDS)
        assert names.is_token(command_id)
        assert command_id == proposal_id(seq, attempt, replica, IDS)
        assert command_id != proposal_id(seq, attempt, replica, other)  # unguessable w/o key
        assert parse_proposal_id(command_id) == (seq, attempt)
    assert parse_proposal_id("01HZZZZZZZZZZZZZZZZZZZZZZZ") is None
    assert parse_proposal_id("place-x-1-r") is None
