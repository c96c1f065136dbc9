"""Machine-wide causes: agents of one pod (or of every pod) deviating together make one finding
about the pod (or the cluster), not one per agent; the Hive records it on the pod and acts on no
agent for it."""

from __future__ import annotations

import functools
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
import pytest

from schemas import REGISTRY, command, event, names, subject_of
from schemas.machine import PodAnomalyDetected, ReportPodAnomaly
from schemas.specs import Capacity
from services.hive.decide import Decision, Rejection, decide
from services.hive.evolve import FoldRefused, evolve
from services.hive.state import RECENT_POD_ANOMALIES, HiveState, Pod
from services.observer.analysis import Observatory
from services.observer.scoring import DetectorConfig
from tests.observer.workload import Load, feed, pod_messages

WINDOW_S = 2.0
SLOW_FROM, SLOW_UNTIL = 150.0, 210.0
SECONDS = 240


def slowed(factor: float = 3.0, *, outlier: float | None = None, jitter: float = 0.15) -> object:
    """Every agent's calls `factor` times slower in [SLOW_FROM, SLOW_UNTIL) (agent 7, if
    `outlier`, that many times); each agent's share of the slowdown varies a little."""

    def shape(agent: int, t: float, rng: random.Random) -> Load:
        rate = 10 + agent % 7 * 5
        calls = max(1, round(rng.gauss(rate, math.sqrt(rate))))
        latency = (2 + agent % 11) * rng.lognormvariate(0, 0.05)
        if SLOW_FROM <= t < SLOW_UNTIL:
            latency *= outlier if outlier and agent == 7 else factor * rng.uniform(1, 1 + jitter)
        return Load(calls=calls, latency_per_call_ms=latency)

    return shape


def observe(agents: int, pods: int, shape: object) -> tuple[list[Any], list[Any], Observatory]:
    core = Observatory(DetectorConfig(), WINDOW_S)
    events = pod_messages(SECONDS, agents, shape, pods=pods)  # type: ignore[arg-type]
    findings, machine = feed(core, events)
    return findings, machine, core


def test_fifty_agents_slowed_together_make_one_pod_finding_and_no_agent_findings() -> None:
    findings, machine, _ = observe(50, 1, slowed())
    assert findings == []
    assert len(machine) == 1, machine
    finding = machine[0]
    assert (finding.scope, finding.pod_id, finding.kind, finding.pods) == (
        "pod",
        "p1",
        "slowdown",
        ("p1",),
    )
    (deviation,) = finding.deviations
    assert deviation.signal == "latency"
    assert deviation.deviating >= 25
    assert deviation.observed == 50
    assert 2.5 < deviation.ratio < 4
    assert finding.withheld >= 1  # agents whose own detectors flagged the slowdown
    assert SLOW_FROM < finding.window_end - 1_800_000_000 <= SLOW_FROM + 2 * WINDOW_S
    assert len(finding.agents) == min(deviation.deviating, 64)
    report = finding.report()
    assert report.severity == "warning"
    assert report.scope == "pod"
    assert "latency x3" in report.summary
    assert "of 50 agents" in report.summary


def test_an_agent_much_slower_than_its_machine_is_still_reported() -> None:
    findings, machine, _ = observe(50, 1, slowed(outlier=40.0))
    assert [m.scope for m in machine] == ["pod"]
    assert [(f.agent_id, f.kind) for f in findings] == [("agent-7", "latency_spike")]


def test_a_few_agents_slowed_together_are_agent_findings() -> None:
    """Two agents of fifty: not the machine (a shared dependency of theirs, or their own doing)."""

    def shape(agent: int, t: float, rng: random.Random) -> Load:
        base = slowed(1.0)(agent, t, rng)  # type: ignore[operator]
        if agent in (3, 4) and SLOW_FROM <= t < SLOW_UNTIL:
            base.latency_per_call_ms *= 10
        return base  # type: ignore[no-any-return]

    findings, machine, _ = observe(50, 1, shape)
    assert machine == []
    assert sorted(f.agent_id for f in findings) == ["agent-3", "agent-4"]


def test_every_pod_slowed_together_is_one_cluster_finding() -> None:
    findings, machine, _ = observe(10, 4, slowed())
    assert findings == []
    scopes = [(m.scope, m.pod_id) for m in machine]
    # The first pod to report is a pod finding (nothing else is known yet), the second makes it
    # the cluster's; the pods after it are part of the cluster's incident.
    assert scopes == [("pod", "p1"), ("cluster", "p2")], scopes
    cluster = machine[1]
    assert cluster.pods == ("p1", "p2")
    assert cluster.deviations[0].deviating >= 10
    assert "cluster-wide" in cluster.summary()


def test_a_replayed_pod_message_changes_no_machine_state() -> None:
    core = Observatory(DetectorConfig(), WINDOW_S)
    events = list(pod_messages(int(SLOW_FROM) + 20, 10, slowed()))
    feed(core, events)
    before = (core.machines.pod("p1").to_json(), core.machines.cluster.to_json())
    feed(core, events[-40:])  # redelivered after a restart from an older position
    assert (core.machines.pod("p1").to_json(), core.machines.cluster.to_json()) == before


# --- the contract and the Hive ------------------------------------------------------------------


@functools.cache
def _report() -> dict[str, Any]:
    _, machine, _ = observe(10, 1, slowed())
    assert machine, "no machine finding to report"
    return machine[0].report().model_dump()


def machine_report(pod_id: str = "p1", **changes: Any) -> ReportPodAnomaly:
    """The report of a real machine finding (computed once), about `pod_id`."""
    return ReportPodAnomaly(**{**_report(), "pod_id": pod_id, **changes})


def hive_with_pod(pod_id: str = "p1") -> HiveState:
    state = HiveState()
    capacity = Capacity(memory_mb=1024, fuel_per_s=10**9, slots=10)
    state.pods[pod_id] = Pod(pod_id, capacity, {}, "", 0.0, 10.0)
    return state


def test_the_hive_records_a_pod_finding_on_the_pod_and_keeps_the_latest() -> None:
    state = hive_with_pod()
    now = datetime.now(UTC)
    for n in range(RECENT_POD_ANOMALIES + 2):
        cmd = command(machine_report(), source="observer", identity="service:observer")
        outcome = decide(state, cmd, now)
        assert isinstance(outcome, Decision), outcome
        (recorded,) = outcome.events
        assert isinstance(recorded, PodAnomalyDetected)
        assert recorded.anomaly_id == cmd.id
        assert recorded.pod_id == "p1"
        # Written on the pod's aggregate, swarm.evt.pod.p1.anomaly_detected, and folded back.
        written = event(recorded, aggregate_id="p1", source="hive", cause=cmd)
        assert subject_of(written) == names.event_subject("pod", "p1", "anomaly_detected")
        evolve(state, 100 + n, REGISTRY.decode(written.to_json()))
    pod = state.pods["p1"]
    assert len(pod.anomalies) == RECENT_POD_ANOMALIES
    assert pod.last_seq == 100 + RECENT_POD_ANOMALIES + 1
    assert pod.anomalies[-1].kind == "slowdown"
    assert pod.anomalies[-1].agents >= 5
    # Nothing about any agent: no healing can follow from it.
    assert state.agents == {}


@pytest.mark.parametrize(
    ("identity", "pod_id", "changes", "rule"),
    [
        ("service:observer", "p9", {}, "not_found"),
        ("user:mallory", "p1", {}, "identity"),
        ("pod:p1", "p1", {}, "identity"),
        (
            "service:observer",
            "p1",
            {"window_end": datetime(2020, 1, 1, tzinfo=UTC) - timedelta(seconds=1)},
            "invalid",
        ),
    ],
)
def test_the_hive_refuses_a_pod_finding_it_cannot_record(
    identity: str, pod_id: str, changes: dict[str, Any], rule: str
) -> None:
    if "window_end" in changes:
        changes["window_start"] = datetime(2020, 1, 1, tzinfo=UTC)
    cmd = command(machine_report(pod_id, **changes), source="observer", identity=identity)
    outcome = decide(hive_with_pod(), cmd, datetime.now(UTC))
    assert isinstance(outcome, Rejection)
    assert outcome.rule == rule


def test_folding_a_pod_finding_about_an_unknown_pod_is_refused() -> None:
    recorded = PodAnomalyDetected(anomaly_id="a1", **machine_report("p9").model_dump())
    written = REGISTRY.decode(event(recorded, aggregate_id="p9", source="hive").to_json())
    state = hive_with_pod()
    with pytest.raises(FoldRefused):
        evolve(state, 5, written)
    assert state.applied_seq == 0


def test_pod_findings_are_bounded() -> None:
    doc = machine_report().model_dump()
    for bad in (
        {"pods": [f"p{i}" for i in range(65)]},
        {"withheld": -1},
        {"summary": "x" * 1001},
        {"deviations": []},
        {"pod_id": "not a token"},
        {"scope": "galaxy"},
    ):
        with pytest.raises(pydantic.ValidationError):
            ReportPodAnomaly(**{**doc, **bad})
    deviation = dict(doc["deviations"][0])
    for value in (math.inf, math.nan, 1e31, -1.0):
        with pytest.raises(pydantic.ValidationError):
            ReportPodAnomaly(**{**doc, "deviations": [{**deviation, "ratio": value}]})
    assert REGISTRY.get("swarm.cmd.pod.report_anomaly") is not None
    assert REGISTRY.get("swarm.pod.anomaly_detected") is not None
