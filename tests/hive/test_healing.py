"""Reputation and self-healing, decided and folded in memory (no servers)."""

from __future__ import annotations

from datetime import timedelta

from schemas import Payload
from schemas import commands as c
from schemas import events as e
from schemas import healing as h
from schemas.observer import ReportAnomaly, SignalEvidence
from schemas.specs import HealingPolicy, Quota
from swarm.domain import heal, reputation
from tests.helpers.sim import T0, Sim
from tests.helpers.steps import (
    deploy,
    place_all,
    pod,
    pod_reports,
    report_replica,
    run_all,
    spec,
    stop_all,
)


def report(
    sim: Sim,
    agent_id: str,
    severity: str = "warning",
    *,
    score: float = 0.9,
    kind: str = "loop",
    replica_id: str | None = None,
    began_s_ago: float = 10.0,
    signals: int = 1,
) -> str:
    """Record a finding as the Observer would, with `signals` signals beyond their thresholds
    in its evidence (two confirm a critical finding on their own); returns its anomaly id."""
    finding = ReportAnomaly(
        agent_id=agent_id,
        replica_id=replica_id,
        detector="robust-z",
        score=score,
        severity=severity,  # type: ignore[arg-type]
        kind=kind,
        window_start=sim.now - timedelta(seconds=began_s_ago),
        window_end=sim.now,
        signals=[
            SignalEvidence(signal=signal, value=9e9, baseline=1e6, score=40, threshold=5)
            for signal in ("fuel", "latency", "error_rate")[:signals]
        ],
        summary=f"{kind} seen",
    )
    events = sim.ok(finding, "service:observer")
    return events[0].anomaly_id  # type: ignore[attr-defined, no-any-return]


def running_agent(sim: Sim, replicas: int = 1, **kw: object) -> str:
    pod(sim, "p1")
    agent_id = deploy(sim, replicas=replicas, **kw)
    place_all(sim, "p1")
    # Each replica starts from a snapshot, so a rewind has one from before an anomaly to go to.
    for report, identity in pod_reports(sim.state, "starting", ("scheduled",)):
        snapshot = f"swarm-snapshots/{report.replica_id}@3"
        sim.ok(report.model_copy(update={"snapshot": snapshot}), identity)
    run_all(sim)
    return agent_id


def act(sim: Sim) -> list[tuple[str, Payload]]:
    """What the reconcile loop would send now, sent (as the Hive) and decided."""
    planned = heal.plan(sim.state, sim.now)
    for _, payload in planned:
        sim.ok(payload, "service:hive")
    return planned


def kinds(planned: list[tuple[str, Payload]]) -> list[str]:
    """The healing commands planned (reputation updates left out)."""
    return [type(p).__name__ for _, p in planned if not isinstance(p, h.PublishReputation)]


# --- reputation ----------------------------------------------------------------------------------


def test_trust_decays_back_to_the_prior_by_event_time() -> None:
    rep = reputation.Reputation()
    reputation.observe(rep, T0, -0.5, "critical")
    assert rep.trust == reputation.PRIOR * 0.5
    later = T0 + timedelta(seconds=reputation.HALF_LIFE_S)
    halfway = reputation.PRIOR - (reputation.PRIOR - rep.trust) / 2
    assert abs(reputation.current(rep, later) - halfway) < 1e-12
    assert reputation.current(rep, T0 + timedelta(days=1)) > reputation.PRIOR - 1e-6
    # Deterministic: the same events give the same score, whatever the wall clock says.
    again = reputation.Reputation()
    reputation.observe(again, T0, -0.5, "critical")
    assert reputation.current(again, later) == reputation.current(rep, later)


def test_outcomes_move_trust_and_every_replica_folds_the_same() -> None:
    sim = Sim()
    agent_id = running_agent(sim)
    agent = sim.state.agents[agent_id]
    after_running = agent.reputation.trust
    assert after_running > reputation.PRIOR
    replica = next(iter(agent.replicas))
    report_replica(sim, agent_id, replica, "crashed", reason="trap")
    after_crash = agent.reputation.trust
    assert after_crash < after_running
    report(sim, agent_id, "critical", score=1.0)
    assert agent.reputation.trust < after_crash
    assert "critical loop anomaly" in agent.reputation.reason
    assert 0.0 <= agent.reputation.trust <= 1.0


def test_a_meaningful_change_is_published_once() -> None:
    sim = Sim(now=T0)
    agent_id = running_agent(sim)
    report(sim, agent_id, "critical", score=1.0)
    sim.state.agents[agent_id].spec = spec(healing=HealingPolicy(on_critical="none"))
    planned = act(sim)
    assert [type(p).__name__ for _, p in planned] == ["PublishReputation"]
    published = [x for x in sim.log if isinstance(x, h.ReputationChanged)]
    assert len(published) == 1
    assert published[0].trust < published[0].previous
    assert heal.plan(sim.state, sim.now) == []  # nothing moved since


# --- healing -------------------------------------------------------------------------------------


def test_a_critical_finding_quarantines_with_its_reason() -> None:
    sim = Sim()
    agent_id = running_agent(sim)
    anomaly = report(sim, agent_id, "critical", kind="cost_blowup", signals=2)
    planned = act(sim)
    assert "QuarantineAgent" in kinds(planned)
    agent = sim.state.agents[agent_id]
    assert agent.quarantine is not None
    assert agent.quarantine.anomaly_id == anomaly
    assert "critical cost_blowup anomaly" in agent.quarantine.reason
    quarantined = [x for x in sim.log if isinstance(x, h.AgentQuarantined)]
    assert len(quarantined) == 1
    # Acted upon once: the next plans send nothing more for it.
    sim.tick(60)
    assert "QuarantineAgent" not in kinds(heal.plan(sim.state, sim.now))
    # A user releases it; the old finding does not quarantine it again.
    sim.ok(h.ReleaseAgent(agent_id=agent_id, reason="looked into it"))
    assert agent.quarantine is None
    sim.tick(60)
    assert "QuarantineAgent" not in kinds(heal.plan(sim.state, sim.now))
    assert sim.rejected(h.ReleaseAgent(agent_id=agent_id)).reason.endswith("is not quarantined")


def test_repeated_warnings_rewind_the_replica_to_its_snapshot_from_before() -> None:
    sim = Sim()
    agent_id = running_agent(sim, replicas=2)
    agent = sim.state.agents[agent_id]
    bad = sorted(agent.replicas)[0]
    sim.tick(120)
    for _ in range(2):
        report(sim, agent_id, "warning", kind="latency_spike", replica_id=bad)
        sim.tick(5)
    assert kinds(heal.plan(sim.state, sim.now)) == []  # two are not yet "repeated"
    anomaly = report(sim, agent_id, "warning", kind="latency_spike", replica_id=bad)
    planned = act(sim)
    assert kinds(planned) == ["RewindReplica"]  # only the replica the findings are about
    rewound = [x for x in sim.log if isinstance(x, h.ReplicaRewound)]
    assert len(rewound) == 1
    assert rewound[0].replica_id == bad
    assert rewound[0].anomaly_id == anomaly
    assert rewound[0].snapshot == f"swarm-snapshots/{bad}@3"
    assert "3 findings within 300s" in rewound[0].reason
    requested = [x for x in sim.log if isinstance(x, e.ReplicaRequested)][-1]
    assert (requested.replica_id, requested.restore) == (bad, "exact")
    assert requested.snapshot == f"swarm-snapshots/{bad}@3"
    assert agent.replicas[bad].phase == "requested"
    assert "predates" not in requested.reason
    assert [a.action for a in agent.actions] == ["restart"]
    # A rewind of a replica that is not running is refused with the reason.
    refused = sim.rejected(
        h.RewindReplica(agent_id=agent_id, replica_id=bad, before=sim.now, reason="again")
    )
    assert "only a running one rewinds" in refused.reason


def test_the_snapshot_chosen_predates_the_anomaly() -> None:
    sim = Sim()
    agent_id = running_agent(sim)
    agent = sim.state.agents[agent_id]
    replica_id = next(iter(agent.replicas))
    replica = agent.replicas[replica_id]
    sim.tick(100)
    # The replica crashed and resumed from a later (bad) snapshot inside the anomaly window.
    report_replica(
        sim,
        agent_id,
        replica_id,
        "crashed",
        reason="trap",
        snapshot=f"swarm-snapshots/{replica_id}@9",
    )
    known = heal.good_snapshot(replica, sim.now - timedelta(seconds=50))
    assert known is not None
    assert known.ref == f"swarm-snapshots/{replica_id}@3"
    latest = heal.good_snapshot(replica, sim.now)
    assert latest is not None
    assert latest.ref == f"swarm-snapshots/{replica_id}@9"
    # Nothing known from before: the oldest known.
    oldest = heal.good_snapshot(replica, T0 - timedelta(days=1))
    assert oldest is not None
    assert oldest.ref == f"swarm-snapshots/{replica_id}@3"


def test_a_finding_right_after_a_rollout_rolls_back() -> None:
    sim = Sim()
    agent_id = running_agent(sim)
    sim.tick(3600)
    sim.ok(c.RolloutAgent(name="echo", spec=spec("v2")))
    place_all(sim, "p1")
    run_all(sim)
    stop_reported(sim)
    agent = sim.state.agents[agent_id]
    assert agent.spec.version == "v2"
    assert agent.rollout is None
    sim.tick(30)
    anomaly = report(sim, agent_id, "critical", kind="cost_blowup", began_s_ago=20, signals=2)
    planned = act(sim)
    assert kinds(planned)[-1] == "RevertAgent"
    reverted = [x for x in sim.log if isinstance(x, h.AgentReverted)]
    assert len(reverted) == 1
    assert (reverted[0].from_version, reverted[0].to_version) == ("v2", "v1")
    assert reverted[0].anomaly_id == anomaly
    assert "after version v2 was rolled out" in reverted[0].reason
    assert agent.spec.version == "v1"
    assert agent.rollout is not None
    assert agent.rollout.rollback
    assert agent.quarantine is None


def test_an_old_version_misbehaving_is_not_rolled_back() -> None:
    sim = Sim()
    agent_id = running_agent(sim)
    sim.tick(30)
    report(sim, agent_id, "critical", signals=2)
    assert kinds(heal.plan(sim.state, sim.now)) == ["QuarantineAgent"]


def test_policy_none_only_records_and_low_trust_quarantines() -> None:
    sim = Sim()
    policy = HealingPolicy(on_critical="none", on_repeated="none", min_trust=0.5)
    agent_id = running_agent(sim, healing=policy)
    report(sim, agent_id, "critical", score=0.3)
    assert "QuarantineAgent" not in kinds(heal.plan(sim.state, sim.now))
    report(sim, agent_id, "critical", score=1.0)
    report(sim, agent_id, "critical", score=1.0)
    # on_critical and on_repeated are "none", so the trust trigger decides.
    planned = heal.plan(sim.state, sim.now)
    quarantine = [p for _, p in planned if isinstance(p, h.QuarantineAgent)]
    assert quarantine
    assert "below 0.5" in quarantine[0].reason


def test_only_services_publish_reputation_and_unknown_agents_are_refused() -> None:
    sim = Sim()
    agent_id = running_agent(sim)
    refused = sim.rejected(h.PublishReputation(agent_id=agent_id), "user:test")
    assert refused.rule == "identity"
    assert sim.rejected(h.QuarantineAgent(agent_id="nope", reason="x")).rule == "not_found"


def stop_reported(sim: Sim) -> None:
    stop_all(sim)


def test_findings_about_a_replaced_version_do_not_count() -> None:
    sim = Sim()
    agent_id = running_agent(sim, healing=HealingPolicy(repeat=2))
    sim.tick(10)
    report(sim, agent_id, "warning")
    sim.tick(10)
    sim.ok(c.RolloutAgent(name="echo", spec=spec("v2", healing=HealingPolicy(repeat=2))))
    sim.tick(10)
    report(sim, agent_id, "warning")
    # One finding before the rollout (about v1) and one after: not two about v2.
    assert kinds(heal.plan(sim.state, sim.now)) == []


def test_a_rewind_with_no_earlier_snapshot_says_so() -> None:
    sim = Sim()
    agent_id = running_agent(sim)
    replica_id = next(iter(sim.state.agents[agent_id].replicas))
    before = sim.now - timedelta(days=1)
    sim.ok(h.RewindReplica(agent_id=agent_id, replica_id=replica_id, before=before, reason="x"))
    requested = [x for x in sim.log if isinstance(x, e.ReplicaRequested)][-1]
    assert requested.restore == "exact"
    assert requested.snapshot == f"swarm-snapshots/{replica_id}@3"
    assert "none predates the anomaly" in requested.reason


# --- graded: no harm from a single signal, warnings or a wave of findings ------------------------


def test_a_critical_finding_on_one_signal_waits_for_its_confirmation() -> None:
    sim = Sim()
    agent_id = running_agent(sim)
    first = report(sim, agent_id, "critical", kind="latency_spike")
    sim.tick(60)
    assert kinds(act(sim)) == []  # one signal, nothing else: not yet
    assert sim.state.agents[agent_id].quarantine is None
    report(sim, agent_id, "warning", kind="latency_spike")
    planned = act(sim)
    assert kinds(planned) == ["QuarantineAgent"]
    quarantine = sim.state.agents[agent_id].quarantine
    assert quarantine is not None
    assert quarantine.anomaly_id == first
    assert "confirmed critical finding" in quarantine.reason
    assert "undo: swarm agent release echo --namespace default" in quarantine.reason


def test_a_critical_finding_confirmed_too_late_does_not_stop_the_agent() -> None:
    sim = Sim()
    agent_id = running_agent(sim, healing=HealingPolicy(confirm_s=60))
    report(sim, agent_id, "critical", kind="latency_spike")
    sim.tick(600)
    report(sim, agent_id, "warning", kind="latency_spike")
    assert kinds(act(sim)) == []


def test_warnings_never_stop_an_agent_even_with_trust_gone() -> None:
    sim = Sim()
    policy = HealingPolicy(on_repeated="none", min_trust=0.99, on_low_trust="quarantine")
    agent_id = running_agent(sim, healing=policy)
    for _ in range(6):
        report(sim, agent_id, "warning", signals=3)
        sim.tick(40)
    assert reputation.current(sim.state.agents[agent_id].reputation, sim.now) < 0.99
    assert kinds(act(sim)) == []
    assert sim.state.agents[agent_id].quarantine is None


def test_confirmation_can_be_turned_off_by_policy() -> None:
    sim = Sim()
    agent_id = running_agent(sim, healing=HealingPolicy(confirm=False))
    report(sim, agent_id, "critical")
    assert kinds(act(sim)) == ["QuarantineAgent"]


def looping_agents(sim: Sim, count: int) -> list[str]:
    """`count` agents (bad-0, bad-1, ...) running on pod p1, each reported in a critical loop
    (two signals); their ids."""
    pod(sim, "p1")
    ids = [deploy(sim, name=f"bad-{i}") for i in range(count)]
    place_all(sim, "p1")
    run_all(sim)
    for agent_id in ids:
        report(sim, agent_id, "critical", kind="loop", signals=2)
    return ids


def test_the_namespace_budget_caps_how_many_agents_healing_stops() -> None:
    sim = Sim()
    ids = looping_agents(sim, 4)
    planned = act(sim)
    assert kinds(planned).count("QuarantineAgent") == 4
    stopped = [a for a in ids if sim.state.agents[a].quarantine is not None]
    assert len(stopped) == 3  # the default budget: 3 per 600 s
    (spared,) = set(ids) - set(stopped)
    skipped = [x for x in sim.log if isinstance(x, h.AgentHealingSkipped)]
    assert [(x.agent_id, x.action) for x in skipped] == [(spared, "quarantine")]
    assert "at most 3 agents stopped by self-healing per 600s" in skipped[0].reason
    agent = sim.state.agents[spared]
    assert [a.action for a in agent.actions] == ["quarantine skipped"]
    assert kinds(heal.plan(sim.state, sim.now)) == []  # handled: not tried again
    # A user still may; and once the window has passed, healing may again.
    sim.ok(h.QuarantineAgent(agent_id=spared, reason="by hand"))
    assert agent.quarantine is not None
    sim.ok(h.ReleaseAgent(agent_id=spared, reason="fixed"))
    sim.tick(601)
    report(sim, spared, "critical", kind="loop", signals=2)
    assert kinds(act(sim)) == ["QuarantineAgent"]
    assert agent.quarantine is not None


def test_a_namespace_may_lift_the_budget() -> None:
    sim = Sim()
    sim.ok(c.UpdateNamespace(name="default", quota=Quota(max_healing_stops=None)))
    ids = looping_agents(sim, 5)
    act(sim)
    assert all(sim.state.agents[a].quarantine is not None for a in ids)


def test_a_backlog_is_the_autoscaler_s_signal_never_a_healing_trigger() -> None:
    sim = Sim()
    agent_id = running_agent(sim, healing=HealingPolicy(repeat=2, confirm=False))
    for _ in range(5):
        report(sim, agent_id, "warning", kind="backlog", signals=2)
        sim.tick(10)
    report(sim, agent_id, "critical", kind="backlog", signals=2)
    assert kinds(act(sim)) == []
    assert sim.state.agents[agent_id].actions == []
