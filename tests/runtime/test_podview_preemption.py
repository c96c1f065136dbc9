"""The pod's projection marks a preempted placement, so the pod saves a last snapshot of it
when it stops it (a replica moved off a lost pod is not saved: that pod is not its owner)."""

from __future__ import annotations

from runtime.podview import PodView
from schemas import events, market
from schemas.specs import AgentSpec, ModuleRef
from tests.helpers.podviews import fold


def test_a_preempted_placement_is_marked_and_a_moved_one_is_not() -> None:
    spec = AgentSpec(version="v1", module=ModuleRef(sha256="0" * 64))
    view = PodView("p1")
    fold(
        view,
        events.AgentDeployed(agent_id="a", namespace="default", name="a", spec=spec, replicas=2),
        events.ReplicaRequested(agent_id="a", replica_id="a-0", version="v1", reason="t"),
        events.ReplicaRequested(agent_id="a", replica_id="a-1", version="v1", reason="t"),
        events.ReplicaScheduled(agent_id="a", replica_id="a-0", pod_id="p1", policy="t", reason=""),
        events.ReplicaScheduled(agent_id="a", replica_id="a-1", pod_id="p1", policy="t", reason=""),
    )
    placed = {r: view.wanted()[r].placed_seq for r in ("a-0", "a-1")}
    fold(
        view,
        market.ReplicaPreempted(
            agent_id="a",
            replica_id="a-0",
            pod_id="p1",
            priority=0,
            by_agent_id="b",
            by_replica_id="b-0",
            by_priority=10,
        ),
        events.ReplicaRequested(agent_id="a", replica_id="a-0", version="v1", reason="preempted"),
        events.ReplicaRequested(agent_id="a", replica_id="a-1", version="v1", reason="pod lost"),
    )
    assert view.wanted() == {}
    assert view.preempted("a-0", placed["a-0"])
    assert not view.preempted("a-1", placed["a-1"])
    # Placed again (here or elsewhere): the new placement is not a preempted one.
    fold(
        view,
        events.ReplicaScheduled(agent_id="a", replica_id="a-0", pod_id="p1", policy="t", reason=""),
    )
    assert not view.preempted("a-0", view.wanted()["a-0"].placed_seq)
