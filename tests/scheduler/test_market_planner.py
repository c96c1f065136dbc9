"""The market inside the planner: a replica that fits nowhere preempts strictly lower
priorities (and nothing else), victims already named are not named twice, and a restarted
scheduler derives the same preemption ids."""

from __future__ import annotations

from schemas import CommandRejected, event, events, market
from schemas.specs import AgentSpec, ModuleRef, Placement, Resources
from services.scheduler.market import Market
from services.scheduler.planner import Planner
from services.scheduler.proposals import Hold
from tests.helpers.history import IDS, WASM, History


def market_history() -> History:
    return History(planner=Planner(Market(), preemption=True, ids=IDS))


def deploy(h: History, agent_id: str, memory: int, priority: int, **placement: object) -> str:
    spec = AgentSpec(
        version="v1",
        module=ModuleRef(inline=WASM),
        resources=Resources(memory_mb=memory, fuel_per_s=1000),
        priority=priority,
        placement=Placement(**placement),  # type: ignore[arg-type]
    )
    h.emit(
        events.AgentDeployed(
            agent_id=agent_id, namespace="default", name=agent_id.lower(), spec=spec, replicas=1
        )
    )
    replica_id = f"{agent_id}-0"
    h.requested(agent_id, replica_id)
    return replica_id


def full_pod(h: History) -> None:
    h.pod("p1", memory=256)
    for name in ("low-a", "low-b"):
        deploy(h, name, 128, 0)
    plan = h.planner.plan(h.now)
    assert [p.pod_id for p in plan.proposals] == ["p1", "p1"]
    h.accept()


def test_a_higher_priority_that_fits_nowhere_preempts_the_newest_lowest() -> None:
    h = market_history()
    full_pod(h)
    deploy(h, "vip", 128, 100)
    plan = h.planner.plan(h.now)
    assert len(plan.proposals) == 1
    preempt = plan.proposals[0]
    assert preempt.command_id.startswith("preempt-")
    assert preempt.pod_id == "p1"
    # One victim (fewest), priority 0, the most recently started of the two.
    assert preempt.victims == (("low-b", "low-b-0"),)
    assert [c["outcome"] for c in h.planner.recent][-1] == "preempt"
    # A restarted scheduler proposes the same preemption under the same id.
    again = h.replay_into(Planner(Market(), preemption=True, ids=IDS)).plan(h.now)
    assert [(p.command_id, p.victims) for p in again.proposals] == [
        (preempt.command_id, preempt.victims)
    ]


def test_equal_priorities_and_priced_out_bids_preempt_nothing() -> None:
    h = market_history()
    full_pod(h)
    deploy(h, "same", 128, 0)
    h.pod("p2", memory=1024)
    deploy(h, "stingy", 2048, 100, max_price=0.01)  # fits nowhere at all: too big
    deploy(h, "poor", 128, 100, max_price=0.5)  # fits on p2, but priced out
    plan = h.planner.plan(h.now)
    placed = {p.replica_id: (p.pod_id, p.victims) for p in plan.proposals}
    assert placed == {"same-0": ("p2", ())}
    waits = {c["replica_id"]: c["reason"] for c in h.planner.recent if c["outcome"] == "waiting"}
    assert waits["poor-0"].startswith("priced out")
    assert waits["stingy-0"] == "fits on no ready pod"


def test_victims_in_flight_are_not_named_twice() -> None:
    h = market_history()
    full_pod(h)
    deploy(h, "vip", 128, 100)
    deploy(h, "vip2", 128, 100)
    deploy(h, "vip3", 128, 100)
    plan = h.planner.plan(h.now)
    victims = [v for p in plan.proposals for v in p.victims]
    assert len(victims) == len(set(victims)) == 2
    assert {p.replica_id for p in plan.proposals} == {"vip-0", "vip2-0"}
    assert ("vip3", "vip3-0") in h.planner.view.waiting
    # Nothing lower is left to preempt while those are in flight: the next pass proposes none.
    assert h.planner.plan(h.now).proposals == []


def vip_preempts_low_b(h: History) -> None:
    """The Hive's decision, as it writes it: vip-0 (priority 100) takes low-b-0's place on p1,
    and low-b-0 waits again."""
    h.emit(
        market.ReplicaPreempted(
            agent_id="low-b",
            replica_id="low-b-0",
            pod_id="p1",
            priority=0,
            by_agent_id="vip",
            by_replica_id="vip-0",
            by_priority=100,
        )
    )
    h.requested("low-b", "low-b-0")


def test_a_committed_preemption_frees_the_ledger_and_the_victim_waits_again() -> None:
    h = market_history()
    full_pod(h)
    deploy(h, "vip", 128, 100)
    (preempt,) = h.planner.plan(h.now).proposals
    assert preempt.victims == (("low-b", "low-b-0"),)
    vip_preempts_low_b(h)
    h.scheduled("vip", "vip-0", "p1")
    assert len(h.planner.in_flight) == 0
    assert h.planner.in_flight.victims == set()
    assert h.planner.view.pods["p1"].free() == (0, 10**9 - 2000, 98)
    assert list(h.planner.view.waiting) == [("low-b", "low-b-0")]
    # Capacity returns: the victim is placed again; nothing lower is left to preempt for it.
    h.pod("p2", memory=512)
    plan = h.planner.plan(h.now)
    assert [(p.replica_id, p.pod_id, p.victims) for p in plan.proposals] == [("low-b-0", "p2", ())]


def test_a_refused_preemption_releases_its_victims_and_is_retried_after_a_backoff() -> None:
    h = market_history()
    full_pod(h)
    deploy(h, "vip", 128, 100)
    (preempt,) = h.planner.plan(h.now).proposals
    h.seq += 1
    refusal = CommandRejected(
        command_id=preempt.command_id,
        command_type=market.PreemptPlacement.TYPE,
        reason="victim moved",
        rule="not_placed",
    )
    retry = h.planner.apply(
        event(refusal, aggregate_id=preempt.command_id, source="test"), h.seq, h.now
    )
    assert retry is not None
    assert retry.at is not None
    assert h.planner.in_flight.victims == set()
    assert h.planner.plan(h.now).proposals == []  # backing off
    (again,) = h.planner.plan(retry.at).proposals
    assert again.victims == preempt.victims
    assert again.command_id != preempt.command_id  # a new attempt, a new id


def test_a_commit_split_across_fetches_does_not_count_the_freed_room_twice() -> None:
    """The Hive's preemption is one atomic append, but a fetch may end inside it: after the
    victim's release is folded and before the preemptor's placement is, p1 is still full."""
    h = market_history()
    full_pod(h)
    deploy(h, "vip", 128, 100)
    (preempt,) = h.planner.plan(h.now).proposals
    assert h.planner.offers()["p1"].free_memory_mb == 0  # as it will be once committed
    vip_preempts_low_b(h)
    # Mid-commit: the view released low-b-0; the ledger no longer credits it as well.
    assert h.planner.offers()["p1"].free_memory_mb == 0
    assert h.planner.plan(h.now).proposals == []  # low-b-0 is not proposed back onto p1
    h.scheduled("vip", "vip-0", "p1")
    assert h.planner.in_flight.held("p1") == Hold()
    assert h.planner.offers()["p1"].free_memory_mb == 0
    assert preempt.command_id not in {p.command_id for p in h.planner.in_flight}
