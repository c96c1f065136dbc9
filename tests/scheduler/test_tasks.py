"""Adaptive task distribution, in memory: spare capacity, reputation, and load that shifts."""

from __future__ import annotations

from collections import Counter
from typing import Any

from schemas import event, healing
from services.scheduler.autoscale import Autoscaler, MetricsFold, ReplicaLoad
from services.scheduler.tasks import DEFAULT_REPUTATION, TaskBoard
from tests.helpers.samples import sample


def loads(fold: MetricsFold) -> list[ReplicaLoad]:
    return list(fold.replicas.values())


def hand_out(board: TaskBoard, fold: MetricsFold, n: int, *, answer_every: int = 1) -> Counter[str]:
    """Hand out `n` tasks; each replica answers its tasks after `answer_every` hand-outs."""
    got: Counter[str] = Counter()
    for i in range(n):
        chosen = board.choose("jobs", loads(fold))
        assert chosen is not None
        board.sent(chosen.replica_id)
        got[chosen.replica_id] += 1
        if (i + 1) % answer_every == 0:
            for rid in list(board.inflight):
                for _ in range(board.inflight[rid]):
                    board.answered(rid)
    return got


def test_tasks_go_to_the_replica_with_spare_capacity_and_follow_shifting_load() -> None:
    fold = MetricsFold(stale_after_s=60.0)
    board = TaskBoard(mailbox_size=100)
    # r1's mailbox is 80 deep, r2's empty.
    fold.observe(sample(0, [("r1", 0, 80), ("r2", 0, 0)]), seen_at=0.0)
    got = hand_out(board, fold, 100, answer_every=10)
    assert got["r2"] >= 90, got
    # Load shifts: r2 is now the busy one.
    fold.observe(sample(1, [("r1", 0, 0), ("r2", 0, 90)]), seen_at=1.0)
    got = hand_out(board, fold, 100, answer_every=10)
    assert got["r1"] >= 90, got


def test_tasks_in_flight_spread_the_load_between_equal_replicas() -> None:
    fold = MetricsFold(stale_after_s=60.0)
    board = TaskBoard(mailbox_size=100)
    fold.observe(sample(0, [("r1", 0, 0), ("r2", 0, 0)]), seen_at=0.0)
    # Nobody answers: what is in flight alone tells the replicas apart.
    got = hand_out(board, fold, 40, answer_every=1000)
    assert got == Counter({"r1": 20, "r2": 20})


def test_reputation_breaks_ties_and_full_or_stopped_replicas_get_nothing() -> None:
    fold = MetricsFold(stale_after_s=60.0)
    board = TaskBoard(mailbox_size=100, reputation_weight=0.5)
    fold.observe(sample(0, [("r1", 0, 10), ("r2", 0, 10), ("r3", 0, 100)]), seen_at=0.0)
    board.set_reputation({"r1": 0.2, "r2": 0.9, "r3": 1.5})
    first = board.choose("jobs", loads(fold))
    assert first is not None
    assert first.replica_id == "r2"
    assert first.reputation == 0.9
    assert first.spare == 0.9
    # r3 is full (and its reputation was clamped to 1).
    assert [c.replica_id for c in board.candidates("jobs", loads(fold))] == ["r2", "r1"]
    assert board.reputation["r3"] == 1.0
    # An agent-level score applies to its replicas without one of their own.
    board.set_reputation({"a1": 0.1})
    assert board.candidates("jobs", loads(fold))[0].reputation == 0.1
    board.set_reputation({})
    assert board.candidates("jobs", loads(fold))[0].reputation == DEFAULT_REPUTATION
    # Other queues, and replicas that do not run, get nothing.
    assert board.choose("other", loads(fold)) is None
    body = sample(1, [("r1", 0, 0)])
    body["replicas"][0]["state"] = "stopping"
    fold.observe(body, seen_at=1.0)
    assert [c.replica_id for c in board.candidates("jobs", loads(fold))] == ["r2"]
    assert board.choose("jobs", loads(fold), exclude=["r2"]) is None


def test_the_log_s_trust_and_quarantine_steer_the_board() -> None:
    """The autoscaler folds `agent.reputation_changed` and quarantine events; the service's board
    shares those maps, so a distrusted agent gets less and a quarantined one nothing."""
    scaler = Autoscaler(step_s=1.0, stale_after_s=60.0)
    board = TaskBoard(
        mailbox_size=100,
        reputation_weight=0.5,
        reputation=scaler.trust,
        quarantined=scaler.quarantined,
    )
    fold = MetricsFold(stale_after_s=60.0)
    fold.observe(sample(0, [("r1", 0, 0)], agent_id="good"), seen_at=0.0)
    fold.observe(sample(0, [("r2", 0, 0)], agent_id="bad", pod_id="p2"), seen_at=0.0)

    def fold_event(seq: int, payload: Any) -> None:
        scaler.fold(event(payload, aggregate_id=payload.agent_id, source="test"), seq)

    fold_event(1, healing.ReputationChanged(agent_id="bad", trust=0.3, previous=0.8, reason="x"))
    ranked = board.candidates("jobs", loads(fold))
    assert [c.agent_id for c in ranked] == ["good", "bad"]
    assert ranked[0].reputation == DEFAULT_REPUTATION
    assert ranked[1].reputation == 0.3

    fold_event(2, healing.AgentQuarantined(agent_id="good", reason="critical finding"))
    assert [c.agent_id for c in board.candidates("jobs", loads(fold))] == ["bad"]
    fold_event(3, healing.AgentReleased(agent_id="good", reason="released by hand"))
    assert [c.agent_id for c in board.candidates("jobs", loads(fold))] == ["good", "bad"]
