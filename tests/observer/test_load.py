"""Anomaly means unlike itself, not busy: the pure core on load that rises and falls (more calls,
proportionally more log lines, a deeper mailbox), on a backlog alone, on a new agent, and on the
incidents it must still call critical."""

from __future__ import annotations

import math
import random

import pytest

from services.observer.analysis import Finding, Observatory
from services.observer.scoring import DetectorConfig
from tests.observer.workload import Load, feed, pod_messages

WINDOW_S = 2.0
CONFIG = DetectorConfig()


def run(seconds: int, shape: object, config: DetectorConfig = CONFIG) -> list[Finding]:
    core = Observatory(config, WINDOW_S)
    findings, _ = feed(core, pod_messages(seconds, 1, shape))  # type: ignore[arg-type]
    return findings


def offered(t: float) -> float:
    """Calls per second of a load test: idle, a trickle, a ramp to 200/s, a hold, back down."""
    cycle = t % 600
    if cycle < 60:
        return 0.0
    if cycle < 180:
        return 5.0
    if cycle < 300:
        return 5.0 + 195.0 * (cycle - 180) / 120
    if cycle < 420:
        return 200.0
    return max(5.0, 200.0 - 195.0 * (cycle - 420) / 60)


def busy(_agent: int, t: float, rng: random.Random) -> Load:
    """An echo under a load test: a log line per call, a mailbox that fills past 50 calls/s,
    calls a little slower when busy (contention), as a real pod shows."""
    rate = offered(t)
    calls = 0 if rate == 0 else max(0, round(rng.gauss(rate, math.sqrt(rate))))
    contention = 1 + 0.3 * min(rate / 200, 1)
    return Load(
        calls=calls,
        latency_per_call_ms=0.2 * contention * rng.lognormvariate(0, 0.1),
        fuel_per_call=4_000,
        mailbox=max(0, round((rate - 50) / 2)),
        log_lines=calls,
    )


def test_load_that_rises_and_falls_is_not_an_anomaly() -> None:
    """Two cycles of idle, trickle, ramp to 40x and back: calls, log lines and the mailbox all
    follow the load, so there is nothing to report."""
    assert run(1200, busy) == []


def test_log_lines_in_proportion_to_calls_are_no_log_flood_but_more_per_call_is() -> None:
    def steady(logs_per_call: float, burst: float) -> object:
        def shape(_agent: int, t: float, rng: random.Random) -> Load:
            rate = 20 if t < 400 else 20 * burst
            calls = round(rng.gauss(rate, math.sqrt(rate)))
            per_call = 1 if t < 400 else logs_per_call
            return Load(calls=calls, log_lines=round(calls * per_call))

        return shape

    # Ten times the traffic, ten times the lines: the same agent.
    assert run(600, steady(1, 10)) == []
    # The same traffic, twenty lines per call instead of one: a log flood, and a warning only
    # (the pod caps what an agent may log; a flood never justifies stopping it).
    findings = run(600, steady(20, 1))
    assert [(f.kind, f.severity) for f in findings] == [("log_flood", "warning")]
    assert findings[0].evidence[0].signal == "logs_per_call"


def test_a_backlog_alone_is_never_critical() -> None:
    """A mailbox that fills while every call behaves (the autoscaler's signal), and then an
    agent that all but stops taking calls from a full mailbox: warnings at most."""

    def shape(_agent: int, t: float, rng: random.Random) -> Load:
        calls = round(rng.gauss(20, 4))
        if t < 400:
            return Load(calls=calls)
        if t < 600:
            return Load(calls=calls, mailbox=min(10_000, int(50 * (t - 400))))
        return Load(calls=1 if t % 4 < 1 else 0, mailbox=256)

    findings = run(800, shape)
    assert findings, "a mailbox wait of minutes should at least be a warning"
    assert {f.kind for f in findings} <= {"backlog", "latency_spike", "behaviour_drift"}
    assert all(f.severity == "warning" for f in findings), findings


def cost_blowup_from(start: float) -> object:
    def shape(_agent: int, t: float, rng: random.Random) -> Load:
        calls = round(rng.gauss(20, 4))
        return Load(calls=calls, fuel_per_call=50_000 * (30 if t >= start else 1))

    return shape


def test_a_new_agent_gets_a_warm_up_before_any_critical_finding() -> None:
    """The same cost blowup: a warning while the agent is new (its first windows are its
    baseline, not evidence against it), critical once it is past the warm-up."""
    config = DetectorConfig(warmup_windows=10, critical_warmup_windows=30)
    # Windows of 2 s: the blowup starts in window 15, between the warm-ups; it goes on, so once
    # the agent has 30 windows behind it the same incident is reported again as critical.
    findings = run(200, cost_blowup_from(30), config)
    assert [(f.kind, f.severity) for f in findings] == [
        ("cost_blowup", "warning"),
        ("cost_blowup", "critical"),
    ]
    assert findings[0].window_end - findings[0].window_start == WINDOW_S
    assert findings[1].window_start >= findings[0].window_end
    # Past the warm-up, the first finding is critical at once.
    late = run(400, cost_blowup_from(300), config)
    assert [(f.kind, f.severity) for f in late] == [("cost_blowup", "critical")]


@pytest.mark.parametrize(
    ("change", "kind"),
    [("loop", "loop"), ("cost", "cost_blowup"), ("latency", "latency_spike")],
)
def test_a_loop_a_cost_blowup_and_a_latency_spike_are_still_critical_at_any_load(
    change: str, kind: str
) -> None:
    """Under the same rising and falling load (the incident starts at the peak, where the
    mailbox is deep and the log lines many), each incident is still found, and critical."""

    def shape(agent: int, t: float, rng: random.Random) -> Load:
        s = busy(agent, t, rng)
        if not 900 <= t < 930:
            return s
        if change == "loop":
            return Load(calls=1, errors=1, fuel_per_call=1e8, latency_per_call_ms=1000, mailbox=256)
        if change == "cost":
            s.fuel_per_call *= 50
        else:
            s.latency_per_call_ms *= 20
        return s

    findings = run(1000, shape)
    assert [(f.kind, f.severity) for f in findings] == [(kind, "critical")], findings
    assert 900 < findings[0].window_end - 1_800_000_000 <= 906
