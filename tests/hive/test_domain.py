"""The Agent Orchestrator's rules, decided and folded in memory."""

from __future__ import annotations

import pytest

from schemas import commands as c
from schemas import events as e
from schemas.specs import Capacity, Quota, RestartPolicy
from swarm.domain.state import HiveState
from tests.helpers.sim import Sim
from tests.helpers.steps import (
    deploy,
    deploy_running,
    place_all,
    pod,
    report_replica,
    run_all,
    spec,
    stop_all,
)


def test_deploy_place_run_walks_the_lifecycle() -> None:
    sim = Sim()
    pod(sim, "p1")
    agent_id = deploy(sim)
    agent = sim.state.agents[agent_id]
    assert agent.status == "requested"
    assert [r.phase for r in agent.replicas.values()] == ["requested", "requested"]
    place_all(sim, "p1")
    assert agent.status == "scheduled"
    assert sim.state.pods["p1"].used_memory_mb == 128
    first = next(iter(agent.replicas.values()))
    report_replica(sim, agent_id, first.replica_id, "starting")
    assert agent.status == "starting"
    run_all(sim)
    assert agent.status == "running"
    assert agent.status_reason == "2/2 replicas running"
    statuses = [(x.previous, x.status) for x in sim.log if isinstance(x, e.AgentStatusChanged)]
    assert statuses == [
        ("requested", "scheduled"),
        ("scheduled", "starting"),
        ("starting", "running"),
    ]


def test_duplicate_deploy_is_rejected_and_names_the_fix() -> None:
    sim = Sim()
    deploy(sim)
    rejection = sim.rejected(c.DeployAgent(name="echo", spec=spec()))
    assert "rollout" in rejection.reason


def test_placement_that_would_overcommit_is_rejected() -> None:
    sim = Sim()
    pod(sim, "small", memory=100)
    agent_id = deploy(sim, replicas=2, memory=64)
    r1, r2 = sim.state.agents[agent_id].replicas
    sim.ok(
        c.ProposePlacement(agent_id=agent_id, replica_id=r1, pod_id="small", policy="t"),
        "service:scheduler",
    )
    rejection = sim.rejected(
        c.ProposePlacement(agent_id=agent_id, replica_id=r2, pod_id="small", policy="t"),
        "service:scheduler",
    )
    assert rejection.rule == "capacity"
    assert "over-commit" in rejection.reason
    assert sim.state.pods["small"].used_memory_mb == 64


def test_placing_twice_is_rejected() -> None:
    sim = Sim()
    pod(sim, "p1")
    agent_id = deploy(sim, replicas=1)
    (r1,) = sim.state.agents[agent_id].replicas
    sim.ok(
        c.ProposePlacement(agent_id=agent_id, replica_id=r1, pod_id="p1", policy="t"),
        "service:scheduler",
    )
    assert (
        sim.rejected(
            c.ProposePlacement(agent_id=agent_id, replica_id=r1, pod_id="p1", policy="t"),
            "service:scheduler",
        ).rule
        == "state"
    )


def test_scale_up_and_down() -> None:
    sim = Sim()
    agent_id = deploy_running(sim, replicas=1)
    sim.ok(c.ScaleAgent(name="echo", replicas=3))
    agent = sim.state.agents[agent_id]
    assert len(agent.active()) == 3
    assert agent.status == "degraded"  # it was running with 1/1, now 1/3
    place_all(sim, "p1")
    run_all(sim)
    assert agent.status == "running"
    out = sim.ok(c.ScaleAgent(name="echo", replicas=1))
    assert sim.types(out).count("agent.replica_stopping") == 2
    stop_all(sim)
    assert len(agent.active()) == 1
    assert sim.state.pods["p1"].used_memory_mb == 64


def test_rolling_update_starts_new_before_stopping_old_then_rollback() -> None:
    sim = Sim()
    agent_id = deploy_running(sim, replicas=2)
    agent = sim.state.agents[agent_id]
    sim.ok(c.RolloutAgent(name="echo", spec=spec("v2")))
    assert agent.rollout is not None
    # Old replicas keep running while the first new one starts.
    assert sum(r.phase == "running" and r.version == "v1" for r in agent.replicas.values()) == 2
    for _ in range(4):
        place_all(sim, "p1")
        run_all(sim)
        stop_all(sim)
    assert agent.rollout is None
    assert {r.version for r in agent.active()} == {"v2"}
    assert len(agent.active()) == 2
    assert agent.status == "running"
    sim.ok(c.RollbackAgent(name="echo"))
    for _ in range(4):
        place_all(sim, "p1")
        run_all(sim)
        stop_all(sim)
    assert {r.version for r in agent.active()} == {"v1"}
    assert agent.history == ["v2", "v1"]


def test_crash_restarts_with_exponential_backoff_then_fails() -> None:
    sim = Sim()
    agent_id = deploy_running(
        sim, replicas=1, restart=RestartPolicy(max_restarts=2, backoff_s=1, window_s=300)
    )
    (rid,) = sim.state.agents[agent_id].replicas
    delays = []
    for _ in range(2):
        out = report_replica(
            sim, agent_id, rid, "crashed", reason="trap: unreachable", snapshot="snap-1"
        )
        crash = next(x for x in out if isinstance(x, e.ReplicaCrashed))
        assert crash.restart_at is not None
        delays.append((crash.restart_at - sim.now).total_seconds())
        assert (
            sim.rejected(c.RestartReplica(agent_id=agent_id, replica_id=rid), "service:hive").rule
            == "backoff"
        )
        sim.tick(delays[-1])
        restarted = sim.ok(c.RestartReplica(agent_id=agent_id, replica_id=rid), "service:hive")
        assert restarted[0].snapshot == "snap-1"  # type: ignore[attr-defined]
        place_all(sim, "p1")
        run_all(sim)
    assert delays == [1.0, 2.0]
    report_replica(sim, agent_id, rid, "crashed", reason="trap")
    agent = sim.state.agents[agent_id]
    assert agent.replicas[rid].phase == "failed"
    assert agent.status == "failed"
    assert "crash loop" in agent.status_reason


def one_replica_on_p1_of_two_pods() -> tuple[Sim, str, str]:
    """Pods p1 and p2, an agent of one replica placed on p1: the sim, the agent and replica ids."""
    sim = Sim()
    pod(sim, "p1")
    pod(sim, "p2")
    agent_id = deploy(sim, replicas=1)
    place_all(sim, "p1")
    (rid,) = sim.state.agents[agent_id].replicas
    return sim, agent_id, rid


def test_lost_pod_reschedules_its_replicas_with_their_snapshot() -> None:
    sim, agent_id, rid = one_replica_on_p1_of_two_pods()
    report_replica(sim, agent_id, rid, "starting", snapshot="s7")
    run_all(sim)
    sim.ok(c.ExpirePod(pod_id="p1", last_heartbeat_age_s=12.5), "service:hive")
    replica = sim.state.agents[agent_id].replicas[rid]
    assert replica.phase == "requested"
    assert replica.snapshot == "s7"
    assert "lease expired" in replica.reason
    assert sim.state.pods["p1"].status == "lost"
    assert sim.state.pods["p1"].used_memory_mb == 0
    assert sim.state.agents[agent_id].status == "degraded"
    place_all(sim, "p2")
    run_all(sim)
    assert sim.state.agents[agent_id].status == "running"
    assert sim.rejected(
        c.ProposePlacement(agent_id=agent_id, replica_id=rid, pod_id="p1", policy="t"),
        "service:scheduler",
    ).rule in ("state", "pod_unavailable")


def test_stale_report_from_old_pod_is_rejected() -> None:
    sim, agent_id, rid = one_replica_on_p1_of_two_pods()
    sim.ok(c.DeregisterPod(pod_id="p1"), "pod:p1")
    place_all(sim, "p2")
    rejection = sim.rejected(
        c.ReportReplica(agent_id=agent_id, replica_id=rid, pod_id="p1", status="running"), "pod:p1"
    )
    assert rejection.rule == "not_assigned"


def test_stop_and_delete() -> None:
    sim = Sim()
    agent_id = deploy_running(sim, replicas=2)
    sim.ok(c.StopAgent(name="echo"))
    stop_all(sim)
    assert sim.state.agents[agent_id].status == "stopped"
    sim.ok(c.ScaleAgent(name="echo", replicas=1))
    place_all(sim, "p1")
    run_all(sim)
    assert sim.state.agents[agent_id].status == "running"
    sim.ok(c.DeleteAgent(name="echo"))
    assert sim.state.agent_named("default", "echo") is None
    stop_all(sim)
    assert agent_id not in sim.state.agents
    assert sim.state.pods["p1"].used_memory_mb == 0
    deploy(sim)  # the name is free again


def test_quota_is_enforced_with_the_rule_named() -> None:
    sim = Sim()
    sim.ok(c.CreateNamespace(name="team", quota=Quota(max_agents=1, max_memory_mb=200)))
    sim.ok(c.DeployAgent(namespace="team", name="a", spec=spec(memory=64), replicas=2))
    assert (
        sim.rejected(c.DeployAgent(namespace="team", name="b", spec=spec())).rule
        == "quota.max_agents"
    )
    assert (
        sim.rejected(c.ScaleAgent(namespace="team", name="a", replicas=4)).rule
        == "quota.max_memory_mb"
    )
    sim.ok(c.ScaleAgent(namespace="team", name="a", replicas=3))


def test_identity_and_autonomy_rules() -> None:
    sim = Sim()
    pod(sim, "p1")
    agent_id = deploy(sim, name="boss", replicas=1, autonomy=["swarm.cmd.agent.scale"])
    deploy(sim, name="worker", replicas=1)
    assert sim.rejected(c.ScaleAgent(name="worker", replicas=2), identity="").rule == "identity"
    assert (
        sim.rejected(
            c.ProposePlacement(
                agent_id=agent_id, replica_id=f"{agent_id}-0", pod_id="p1", policy="t"
            ),
            "user:bob",
        ).rule
        == "identity"
    )
    assert (
        sim.rejected(
            c.RegisterPod(pod_id="p9", capacity=Capacity(memory_mb=1, fuel_per_s=1, slots=1)),
            "pod:p1",
        ).rule
        == "identity"
    )
    sim.ok(c.ScaleAgent(name="worker", replicas=2), identity=f"agent:{agent_id}")
    rejection = sim.rejected(c.DeleteAgent(name="worker"), identity=f"agent:{agent_id}")
    assert rejection.rule == "autonomy"
    assert "swarm.cmd.agent.scale" in rejection.reason


def test_evolve_is_idempotent_by_sequence_and_digest_is_stable() -> None:
    sim = Sim()
    pod(sim, "p1")
    deploy(sim)
    place_all(sim, "p1")
    digest = sim.state.digest()
    from schemas import event
    from swarm.domain.evolve import evolve

    replay = HiveState()
    envelopes = [
        event(
            p,
            aggregate_id=getattr(p, "agent_id", getattr(p, "pod_id", "x")),
            source="t",
            time=sim.now,
        )
        for p in sim.log
    ]
    for i, env in enumerate(envelopes, 1):
        evolve(replay, i, env)
    for i, env in enumerate(envelopes, 1):
        evolve(replay, i, env)  # again: nothing changes
    assert replay.applied_seq == len(envelopes)
    assert replay.digest() == digest


@pytest.mark.parametrize("replicas", [0, 5])
def test_deploy_with_zero_or_many_replicas(replicas: int) -> None:
    sim = Sim()
    agent_id = deploy(sim, replicas=replicas)
    agent = sim.state.agents[agent_id]
    assert len(agent.active()) == replicas
    assert agent.status == ("stopped" if replicas == 0 else "requested")


def test_a_lost_pod_with_more_replicas_than_one_write_holds_is_emptied_in_steps() -> None:
    sim = Sim()
    pod(sim, "big", memory=10**6, slots=1000)
    for name in ("a", "b"):
        deploy(sim, name=name, replicas=250, memory=1)
    place_all(sim, "big")
    assert len(sim.state.pods["big"].replicas) == 500
    first = sim.ok(c.ExpirePod(pod_id="big", last_heartbeat_age_s=30), "service:hive")
    assert sim.types(first).count("agent.replica_requested") == 400
    assert sim.state.pods["big"].status == "lost"
    assert len(sim.state.pods["big"].replicas) == 100
    second = sim.ok(c.ExpirePod(pod_id="big", last_heartbeat_age_s=0), "service:hive")
    assert "pod.lost" not in sim.types(second)
    assert sim.types(second).count("agent.replica_requested") == 100
    assert sim.ok(c.ExpirePod(pod_id="big", last_heartbeat_age_s=0), "service:hive") == []
