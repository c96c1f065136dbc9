"""Predictive autoscaling, in memory: the forecasts, the rule, the folds, and the Hive's side."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import commands as c
from schemas import event
from schemas import events as e
from schemas.specs import AutoscaleDecision, AutoscalePolicy, DemandForecast
from services.scheduler.autoscale import (
    Autoscaler,
    Demand,
    MetricsFold,
    SampleError,
    ScalingState,
    decide,
    wanted,
)
from services.scheduler.forecast import Forecaster
from tests.helpers.samples import sample
from tests.helpers.sim import Sim
from tests.helpers.steps import deploy_running, spec

# --- forecasts -----------------------------------------------------------------------------------


def test_holt_forecasts_a_ramp_above_its_present_and_ewma_does_not() -> None:
    holt, ewma = Forecaster("holt", 1.0), Forecaster("ewma", 1.0)
    for y in range(10, 60, 5):  # +5 per step
        holt.learn(y)
        ewma.learn(y)
    # Ten steps ahead, a trend-aware forecast is well above the last value (55) ...
    assert holt.forecast(10.0) > 55 + 5 * 5
    # ... and grows with the horizon, while a level-only one stays at or below the present.
    assert holt.forecast(10.0) > holt.forecast(2.0) > 55
    assert ewma.forecast(10.0) == pytest.approx(ewma.forecast(2.0))
    assert ewma.forecast(10.0) <= 55


def test_forecast_of_a_falling_series_never_goes_below_zero() -> None:
    f = Forecaster("holt", 5.0)
    for y in (100, 60, 20, 5):
        f.learn(y)
    assert f.forecast(60.0) == 0.0


def test_forecast_before_two_samples_is_the_last_value() -> None:
    f = Forecaster("holt", 5.0)
    assert f.forecast(30.0) == 0.0
    f.learn(12.0)
    assert f.forecast(30.0) == 12.0
    assert f.steps(30.0) == 6
    assert f.steps(1.0) == 1


# --- the rule ------------------------------------------------------------------------------------

POLICY = AutoscalePolicy(
    min_replicas=1,
    max_replicas=5,
    target_rate=50.0,
    cooldown_s=10.0,
    scale_down_after_s=30.0,
    horizon_s=10.0,
)


def forecast(rate: float, rate_forecast: float, **kw: Any) -> DemandForecast:
    base: dict[str, Any] = {
        "method": "holt",
        "horizon_s": 10.0,
        "rate": rate,
        "rate_forecast": rate_forecast,
        "queue": 0.0,
        "queue_forecast": 0.0,
        "capacity_rate": 50.0,
        "reporting": 1,
    }
    return DemandForecast(**{**base, **kw})


def test_policy_bounds_are_validated() -> None:
    with pytest.raises(ValidationError, match="min_replicas"):
        AutoscalePolicy(min_replicas=4, max_replicas=2)
    with pytest.raises(ValidationError):
        AutoscalePolicy(min_replicas=0)
    with pytest.raises(ValidationError):
        AutoscalePolicy(max_replicas=401)


def test_scales_up_on_the_forecast_while_the_present_is_below_capacity() -> None:
    state = ScalingState()
    d = decide(POLICY, 1, forecast(40.0, 80.0), state, now=100.0)
    assert d is not None
    assert (d.direction, d.previous, d.replicas) == ("up", 1, 2)
    assert d.forecast.rate == 40.0 < 50.0  # not saturated yet
    assert "80.0/s" in d.reason
    assert "2 replicas needed" in d.reason


def test_wanted_is_clamped_to_the_bounds_and_takes_the_larger_signal() -> None:
    assert wanted(POLICY, 10_000.0, 0.0, 50.0, None) == 5
    assert wanted(POLICY, 0.0, 0.0, 50.0, None) == 1
    assert wanted(POLICY, 100.0, 0.0, 50.0, None) == 2  # exactly at capacity: no extra
    assert wanted(POLICY, 100.0, 90.0, 50.0, 10.0) == 5  # queue wants 9, max is 5
    assert wanted(POLICY, 60.0, 25.0, 50.0, 10.0) == 3


def test_cooldown_holds_the_next_decision_back() -> None:
    state = ScalingState()
    first = decide(POLICY, 1, forecast(40.0, 80.0), state, now=100.0)
    assert first is not None
    assert first.replicas == 2
    # Demand keeps rising, but the cooldown (10 s) has not passed.
    assert decide(POLICY, 2, forecast(90.0, 160.0), state, now=105.0) is None
    later = decide(POLICY, 2, forecast(95.0, 170.0), state, now=110.0)
    assert later is not None
    assert later.replicas == 4


def test_scale_down_only_after_sustained_low_demand_and_to_the_peak_of_that_time() -> None:
    state = ScalingState()
    t = 0.0
    # 4 replicas, demand for one: wait scale_down_after_s (30 s) before acting.
    for _ in range(6):  # t = 0..25
        assert decide(POLICY, 4, forecast(20.0, 20.0), state, now=t) is None
        t += 5
    # One busy tick (wants all 4) restarts the wait.
    assert decide(POLICY, 4, forecast(180.0, 190.0), state, now=t) is None
    t += 5
    for _ in range(6):  # t = 35..60: 25 s of low demand, one of them wanting 2
        rate = 70.0 if t == 40 else 20.0
        assert decide(POLICY, 4, forecast(rate, rate), state, now=t) is None
        t += 5
    d = decide(POLICY, 4, forecast(20.0, 20.0), state, now=t)  # 30 s low
    assert d is not None
    assert (d.direction, d.replicas) == ("down", 2)  # the most the quiet period wanted
    assert "30s" in d.reason


def test_a_rising_forecast_keeps_a_quiet_present_from_scaling_down() -> None:
    state = ScalingState()
    for t in range(0, 100, 5):
        # Now 20/s (one replica's worth) but 140/s expected: keep 3.
        assert decide(POLICY, 3, forecast(20.0, 140.0), state, now=float(t)) is None


def test_counts_outside_the_bounds_are_corrected_at_once() -> None:
    state = ScalingState(last_decision_at=99.0)  # even within the cooldown
    d = decide(POLICY, 9, forecast(0.0, 0.0), state, now=100.0)
    assert d is not None
    assert (d.direction, d.replicas) == ("bounds", 5)
    d = decide(
        POLICY.model_copy(update={"min_replicas": 3}), 1, forecast(0.0, 0.0), state, now=100.0
    )
    assert d is not None
    assert (d.direction, d.replicas) == ("bounds", 3)


def test_nothing_is_decided_without_demand_or_capacity() -> None:
    state = ScalingState()
    assert decide(POLICY, 1, forecast(0.0, 500.0, reporting=0), state, now=0.0) is None
    no_capacity = forecast(400.0, 500.0, capacity_rate=None)
    assert decide(POLICY, 1, no_capacity, state, now=0.0) is None


# --- metric samples ------------------------------------------------------------------------------


def test_rates_come_from_counter_deltas_and_stale_replicas_drop_out() -> None:
    fold = MetricsFold(stale_after_s=10.0)
    fold.observe(sample(0, [("r1", 0, 0), ("r2", 100, 0)]), seen_at=0.0)
    fold.observe(sample(2, [("r1", 40, 3), ("r2", 160, 1)]), seen_at=2.0)
    demand = Demand.of(fold.of_agent("a1", now=2.0))
    assert demand.rate == pytest.approx(20.0 + 30.0)
    assert demand.queue == 4
    assert demand.reporting == 2
    # A restarted replica (counter went back) has no rate until its next sample.
    fold.observe(sample(4, [("r1", 5, 0)]), seen_at=4.0)
    assert fold.replicas["r1"].rate is None
    # A duplicate (same pod time) changes nothing.
    fold.observe(sample(4, [("r1", 999, 0)]), seen_at=4.5)
    assert fold.replicas["r1"].last.received == 5
    assert [r.last.replica_id for r in fold.of_agent("a1", now=12.5)] == ["r1"]
    fold.prune(now=20.0)
    assert fold.replicas == {}


def test_a_sample_that_is_not_a_pod_sample_is_refused() -> None:
    fold = MetricsFold(stale_after_s=10.0)
    with pytest.raises(SampleError):
        fold.observe({"pod_id": "p1", "replicas": [{"agent_id": "a"}]}, seen_at=0.0)
    with pytest.raises(SampleError):
        fold.observe({"hello": 1}, seen_at=0.0)


def test_capacity_is_learned_from_busy_time_when_no_target_rate_is_given() -> None:
    fold = MetricsFold(stale_after_s=10.0)
    # 200 calls in 1000 busy ms: one replica handles 200 messages per busy second.
    fold.observe(sample(0, [("r1", 200, 0)], busy_ms=1000.0, calls=200), seen_at=0.0)
    demand = Demand.of(fold.of_agent("a1", now=0.0))
    assert demand.service_rate == pytest.approx(200.0)


# --- the autoscaler over the log and samples -----------------------------------------------------


def envelope(payload: Any, agent_id: str = "a1") -> Any:
    return event(payload, aggregate_id=agent_id, source="test")


def deployed(policy: AutoscalePolicy) -> Any:
    """Agent a1 ("echo", one replica) deployed with `policy`, as the autoscaler folds it."""
    return envelope(
        e.AgentDeployed(
            agent_id="a1",
            namespace="default",
            name="echo",
            spec=spec(),
            replicas=1,
            autoscale=policy,
        )
    )


def test_a_synthetic_ramp_is_scaled_up_before_it_saturates_one_replica() -> None:
    policy = AutoscalePolicy(max_replicas=6, target_rate=50.0, cooldown_s=5.0, horizon_s=5.0)
    scaler = Autoscaler(step_s=1.0, stale_after_s=5.0)
    scaler.fold(deployed(policy), 1)
    received, rate, seq = 0, 10.0, 1
    first_up: tuple[float, Any] | None = None
    for t in range(60):
        received += int(rate)
        scaler.metrics.observe(sample(t, [("r1", received, 0)]), seen_at=float(t))
        for request in scaler.tick(float(t)):
            seq += 1
            scaler.fold(
                envelope(
                    e.AgentScaled(
                        agent_id="a1",
                        replicas=request.decision.replicas,
                        previous=request.decision.previous,
                    )
                ),
                seq,
            )
            if first_up is None:
                first_up = (rate, request.decision)
        rate += 2.0  # +2 msg/s every second: one replica's 50/s is reached at t = 20
    assert first_up is not None
    rate_then, decision = first_up
    assert decision.direction == "up"
    assert decision.replicas >= 2
    assert rate_then < 50.0, "scaled only after saturation"
    assert rate_then > 30.0, "scaled on noise, long before the ramp needed it"
    assert decision.forecast.rate_forecast > 50.0 > decision.forecast.rate
    assert decision.forecast.capacity_rate == 50.0
    assert decision.forecast.method == "holt"
    # And it kept up: by the end (rate 130/s) there is room for it.
    assert scaler.agents["a1"].desired * 50.0 >= 120.0


def test_pending_requests_stopped_agents_and_policy_changes() -> None:
    policy = AutoscalePolicy(max_replicas=4, target_rate=10.0, cooldown_s=0.0, horizon_s=1.0)
    scaler = Autoscaler(step_s=1.0, stale_after_s=5.0, pending_timeout_s=3.0)
    scaler.fold(deployed(policy), 1)
    scaler.metrics.observe(sample(0, [("r1", 0, 0)]), seen_at=0.0)
    scaler.metrics.observe(sample(1, [("r1", 30, 0)]), seen_at=1.0)
    first = scaler.tick(1.0)
    assert [r.decision.replicas for r in first] == [3]
    # Not on the log yet: not asked again until the request times out.
    assert scaler.tick(2.0) == []
    assert [r.decision.replicas for r in scaler.tick(4.5)] == [3]
    scaler.fold(envelope(e.AgentScaled(agent_id="a1", replicas=3, previous=1)), 2)
    assert scaler.agents["a1"].pending is None
    assert scaler.agents["a1"].desired == 3
    # Stopped by hand (0 replicas): left alone.
    scaler.fold(envelope(e.AgentScaled(agent_id="a1", replicas=0, previous=3)), 3)
    assert scaler.tick(5.0) == []
    # Policy removed: nothing more; an event folded twice changes nothing.
    scaler.fold(envelope(e.AgentScaled(agent_id="a1", replicas=2, previous=0)), 4)
    scaler.fold(envelope(e.AgentAutoscaleChanged(agent_id="a1", autoscale=None)), 5)
    scaler.fold(envelope(e.AgentScaled(agent_id="a1", replicas=0, previous=2)), 4)
    assert scaler.agents["a1"].desired == 2
    assert scaler.tick(6.0) == []
    scaler.fold(envelope(e.AgentDeleted(agent_id="a1", reason="x")), 6)
    assert scaler.agents == {}


def test_who_may_answer_for_a_replica_follows_the_log() -> None:
    """`placed`: where the log last placed each replica, until it is stopped, given up on or
    its agent deleted; a replica moved to another pod is answered for by that pod alone."""
    scaler = Autoscaler(step_s=1.0, stale_after_s=5.0)
    scaler.fold(deployed(AutoscalePolicy(max_replicas=4, target_rate=10.0)), 1)

    def scheduled(replica: str, pod: str) -> Any:
        return envelope(
            e.ReplicaScheduled(
                agent_id="a1", replica_id=replica, pod_id=pod, policy="spread", reason="t"
            )
        )

    for seq, (replica, pod) in enumerate([("r1", "p1"), ("r2", "p1"), ("r3", "p2")], start=2):
        scaler.fold(scheduled(replica, pod), seq)
    scaler.fold(scheduled("r2", "p2"), 5)
    assert scaler.placed == {"r1": ("a1", "p1"), "r2": ("a1", "p2"), "r3": ("a1", "p2")}
    scaler.fold(envelope(e.ReplicaStopped(agent_id="a1", replica_id="r1", reason="scale")), 6)
    scaler.fold(envelope(e.ReplicaFailed(agent_id="a1", replica_id="r3", reason="crashes")), 7)
    assert scaler.placed == {"r2": ("a1", "p2")}
    scaler.fold(envelope(e.AgentDeleted(agent_id="a1", reason="x")), 8)
    assert scaler.placed == {}


# --- the Hive's side -----------------------------------------------------------------------------


def decision(replicas: int, previous: int) -> AutoscaleDecision:
    return AutoscaleDecision(
        direction="up",
        previous=previous,
        replicas=replicas,
        reason="test",
        forecast=forecast(40.0, 80.0),
    )


def test_the_hive_records_the_forecast_behind_an_autoscaled_scale() -> None:
    sim = Sim()
    agent_id = deploy_running(sim, replicas=1)
    # Not autoscaled yet: a decision is refused, as is one from a user.
    scale = c.ScaleAgent(name="echo", replicas=2, autoscale=decision(2, 1))
    assert sim.rejected(scale, "service:scheduler").rule == "autoscale"
    policy = AutoscalePolicy(max_replicas=4, target_rate=50.0)
    out = sim.ok(c.AutoscaleAgent(name="echo", autoscale=policy))
    assert out == [e.AgentAutoscaleChanged(agent_id=agent_id, autoscale=policy, previous=None)]
    assert sim.state.agents[agent_id].autoscale == policy
    assert sim.ok(c.AutoscaleAgent(name="echo", autoscale=policy)) == []  # unchanged: no event
    assert sim.rejected(scale, "user:test").rule == "identity"
    out = sim.ok(scale, "service:scheduler")
    scaled = [p for p in out if isinstance(p, e.AgentScaled)]
    assert scaled == [e.AgentScaled(agent_id=agent_id, replicas=2, previous=1,
                                    autoscale=decision(2, 1))]  # fmt: skip
    requested = [p for p in out if isinstance(p, e.ReplicaRequested)]
    assert len(requested) == 1
    assert requested[0].reason.startswith("autoscale up")
    assert sim.state.agents[agent_id].replicas_desired == 2
    # A hand scale still works and carries no decision.
    out = sim.ok(c.ScaleAgent(name="echo", replicas=1))
    assert [p.autoscale for p in out if isinstance(p, e.AgentScaled)] == [None]


def test_deploy_with_a_policy_keeps_it_on_the_agent() -> None:
    sim = Sim()
    policy = AutoscalePolicy(min_replicas=2, max_replicas=3, target_queue=10.0)
    out = sim.ok(c.DeployAgent(name="echo", spec=spec(), replicas=2, autoscale=policy))
    deployed = out[0]
    assert isinstance(deployed, e.AgentDeployed)
    assert deployed.autoscale == policy
    agent = sim.state.agent_named("default", "echo")
    assert agent is not None
    assert agent.autoscale == policy
    assert math.isclose(agent.autoscale.target_queue or 0, 10.0)


def test_ticks_faster_than_samples_learn_each_sample_once_and_keep_the_horizon() -> None:
    policy = AutoscalePolicy(max_replicas=6, target_rate=50.0, cooldown_s=5.0, horizon_s=5.0)
    # Ticks every 0.25 s, samples every second: the forecaster learns per sample and measures
    # the step, so a 5 s horizon is still 5 samples ahead.
    scaler = Autoscaler(step_s=0.25, stale_after_s=5.0)
    scaler.fold(deployed(policy), 1)
    received, rate = 0, 10.0
    first_up: float | None = None
    for t in range(30):
        received += int(rate)
        scaler.metrics.observe(sample(t, [("r1", received, 0)]), seen_at=float(t))
        for quarter in range(4):
            if scaler.tick(t + quarter / 4) and first_up is None:
                first_up = rate
        rate += 2.0
    rate_forecaster = scaler.agents["a1"].rate
    assert rate_forecaster is not None
    assert rate_forecaster.samples == 29  # the first sample has no rate
    assert rate_forecaster.step_s == pytest.approx(1.0, abs=0.01)
    assert first_up is not None
    assert 30.0 < first_up < 50.0
