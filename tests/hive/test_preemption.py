"""The Hive's preemption rule: victims of a strictly lower priority leave a pod and the waiting
replica takes their place, in one decision that never over-commits the pod."""

from __future__ import annotations

import pytest

from schemas import commands as c
from schemas import events as e
from schemas import market as m
from schemas.specs import AgentSpec, Capacity, ModuleRef, Placement, Resources
from swarm.domain.state import HiveState
from tests.helpers.history import WASM
from tests.helpers.sim import Sim
from tests.helpers.steps import report_replica

SCHEDULER = "service:scheduler"


def spec(memory: int, priority: int = 0, **placement: object) -> AgentSpec:
    return AgentSpec(
        version="v1",
        module=ModuleRef(inline=WASM),
        resources=Resources(memory_mb=memory),
        priority=priority,
        placement=Placement(**placement),  # type: ignore[arg-type]
    )


def deploy(sim: Sim, name: str, memory: int, replicas: int = 1, **kw: object) -> str:
    events = sim.ok(c.DeployAgent(name=name, spec=spec(memory, **kw), replicas=replicas))  # type: ignore[arg-type]
    deployed = events[0]
    assert isinstance(deployed, e.AgentDeployed)
    return deployed.agent_id


def place(sim: Sim, agent_id: str, replica: int, pod_id: str) -> None:
    sim.ok(
        c.ProposePlacement(
            agent_id=agent_id, replica_id=f"{agent_id}-{replica}", pod_id=pod_id, policy="test"
        ),
        SCHEDULER,
    )


def full_pod() -> tuple[Sim, str, str]:
    """A 256 MB pod filled by two 128 MB replicas of priority 0; a 256 MB one of 100 waits."""
    sim = Sim(HiveState())
    sim.ok(c.RegisterPod(pod_id="p1", capacity=Capacity(memory_mb=256, fuel_per_s=10**12, slots=8)))
    low = deploy(sim, "low", 128, replicas=2)
    place(sim, low, 0, "p1")
    place(sim, low, 1, "p1")
    high = deploy(sim, "high", 256, priority_class="high")
    return sim, low, high


def preempt(high: str, victims: list[tuple[str, str]], pod_id: str = "p1") -> m.PreemptPlacement:
    return m.PreemptPlacement(
        agent_id=high,
        replica_id=f"{high}-0",
        pod_id=pod_id,
        victims=[m.Victim(agent_id=a, replica_id=r) for a, r in victims],
        policy="market",
        reason="test",
    )


def test_lower_priority_victims_make_room_atomically() -> None:
    sim, low, high = full_pod()
    out = sim.ok(preempt(high, [(low, f"{low}-0"), (low, f"{low}-1")]), SCHEDULER)
    assert [t for t in sim.types(out) if not t.endswith("status_changed")] == [
        "agent.replica_preempted",
        "agent.replica_requested",
        "agent.replica_preempted",
        "agent.replica_requested",
        "agent.replica_scheduled",
    ]
    preempted = [p for p in out if isinstance(p, m.ReplicaPreempted)]
    assert {(p.priority, p.by_priority, p.by_replica_id) for p in preempted} == {
        (0, 100, f"{high}-0")
    }
    pod = sim.state.pods["p1"]
    assert pod.replicas == {(high, f"{high}-0")}
    assert pod.used_memory_mb == 256
    victims = sim.state.agents[low].replicas
    assert {r.phase for r in victims.values()} == {"requested"}
    assert all(r.pod_id is None for r in victims.values())
    assert "preempted on p1" in victims[f"{low}-0"].reason


def test_the_victims_snapshot_goes_with_it() -> None:
    sim, low, high = full_pod()
    report_replica(sim, low, f"{low}-0", "starting", snapshot="s/k@3")
    out = sim.ok(preempt(high, [(low, f"{low}-0"), (low, f"{low}-1")]), SCHEDULER)
    requested = [p for p in out if isinstance(p, e.ReplicaRequested)]
    assert {p.replica_id: p.snapshot for p in requested} == {f"{low}-0": "s/k@3", f"{low}-1": None}


def test_nothing_is_preempted_for_an_equal_priority() -> None:
    sim = Sim(HiveState())
    sim.ok(c.RegisterPod(pod_id="p1", capacity=Capacity(memory_mb=128, fuel_per_s=10**12, slots=8)))
    first = deploy(sim, "first", 128, priority=5)
    place(sim, first, 0, "p1")
    same = deploy(sim, "same", 128, priority=5)
    refusal = sim.rejected(preempt(same, [(first, f"{first}-0")]), SCHEDULER)
    assert refusal.rule == "priority"
    assert sim.state.pods["p1"].replicas == {(first, f"{first}-0")}


def test_nothing_is_preempted_for_a_lower_priority() -> None:
    sim = Sim(HiveState())
    sim.ok(c.RegisterPod(pod_id="p1", capacity=Capacity(memory_mb=128, fuel_per_s=10**12, slots=8)))
    critical = deploy(sim, "critical", 128, priority_class="critical")
    place(sim, critical, 0, "p1")
    low = deploy(sim, "low", 128, priority_class="low")
    assert sim.rejected(preempt(low, [(critical, f"{critical}-0")]), SCHEDULER).rule == "priority"


def test_one_higher_priority_victim_refuses_the_whole_preemption() -> None:
    sim = Sim(HiveState())
    sim.ok(c.RegisterPod(pod_id="p1", capacity=Capacity(memory_mb=256, fuel_per_s=10**12, slots=8)))
    low = deploy(sim, "low", 128)
    top = deploy(sim, "top", 128, priority=500)
    place(sim, low, 0, "p1")
    place(sim, top, 0, "p1")
    mid = deploy(sim, "mid", 256, priority=100)
    before = len(sim.log)
    refusal = sim.rejected(preempt(mid, [(low, f"{low}-0"), (top, f"{top}-0")]), SCHEDULER)
    assert refusal.rule == "priority"
    assert len(sim.log) == before


def test_too_few_victims_is_a_capacity_refusal() -> None:
    sim, low, high = full_pod()
    refusal = sim.rejected(preempt(high, [(low, f"{low}-0")]), SCHEDULER)
    assert refusal.rule == "capacity"
    assert sim.state.pods["p1"].used_memory_mb == 256


def test_victims_must_be_placed_on_that_pod() -> None:
    sim, low, high = full_pod()
    sim.ok(c.RegisterPod(pod_id="p2", capacity=Capacity(memory_mb=512, fuel_per_s=10**12, slots=8)))
    refusal = sim.rejected(
        preempt(high, [(low, f"{low}-0"), (low, f"{low}-1")], pod_id="p2"), SCHEDULER
    )
    assert refusal.rule == "not_placed"
    waiting = deploy(sim, "waiting", 64)  # requested, holds nothing
    assert sim.rejected(preempt(high, [(waiting, f"{waiting}-0")]), SCHEDULER).rule == "not_placed"


def test_only_services_may_preempt() -> None:
    sim, low, high = full_pod()
    refusal = sim.rejected(preempt(high, [(low, f"{low}-0"), (low, f"{low}-1")]), "user:mallory")
    assert refusal.rule == "identity"


def test_a_preempted_replica_is_placed_again_when_capacity_returns() -> None:
    sim, low, high = full_pod()
    sim.ok(preempt(high, [(low, f"{low}-0"), (low, f"{low}-1")]), SCHEDULER)
    refusal = sim.send(
        c.ProposePlacement(agent_id=low, replica_id=f"{low}-0", pod_id="p1", policy="test"),
        SCHEDULER,
    )
    assert getattr(refusal, "rule", None) == "capacity"
    sim.ok(c.RegisterPod(pod_id="p2", capacity=Capacity(memory_mb=512, fuel_per_s=10**12, slots=8)))
    place(sim, low, 0, "p2")
    place(sim, low, 1, "p2")
    assert sim.state.pods["p2"].used_memory_mb == 256
    assert sim.state.agents[low].replicas_desired == 2


def test_priority_class_and_number_must_agree() -> None:
    assert spec(64, priority_class="high").effective_priority == 100
    assert spec(64, priority=7).effective_priority == 7
    assert spec(64, priority=100, priority_class="high").effective_priority == 100
    with pytest.raises(ValueError, match="contradicts"):
        spec(64, priority=5, priority_class="high")
