"""Machine-wide findings: many agents of one pod (or of several pods) deviating together.

When a pod's machine is starved of CPU or NATS is slow, every agent on it answers slower at once.
The Observer then reports one finding about the pod (or, when pods across the cluster deviate
together, about the cluster) instead of one per agent, and withholds the agent findings the
machine explains. The Hive records it on the pod's aggregate (`swarm.pod.anomaly_detected`);
no healing policy acts on it: a machine finding never stops an agent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from schemas.envelope import Payload
from schemas.registry import REGISTRY
from schemas.specs import Id

#: Bound of a value, baseline, ratio or score: beyond any metric a pod reports, but finite.
MAX_VALUE = 1e30
#: Agents counted in one finding (a pod holds at most this many replicas in practice).
MAX_AGENTS = 1_000_000
#: Agents named in a finding, the most deviating first; pods named in a cluster finding.
MAX_NAMED = 64

Scope = Literal["pod", "cluster"]
Severity = Literal["info", "warning", "critical"]
#: Signals on which a machine makes all its agents deviate (per call, so not the load).
MachineSignal = Literal["latency", "error_rate"]


def _number(low: float = -MAX_VALUE) -> Any:
    """A finite number within [low, MAX_VALUE]."""
    return Field(ge=low, le=MAX_VALUE, allow_inf_nan=False)


class MachineDeviation(Payload):
    """One signal on which the agents deviated together, in one window."""

    signal: MachineSignal
    #: Agents whose signal was at least `threshold` robust z-scores above their own baseline.
    deviating: int = Field(ge=0, le=MAX_AGENTS)
    #: Agents with calls and a warm baseline for the signal in the window.
    observed: int = Field(ge=0, le=MAX_AGENTS)
    #: Median of value / baseline among the deviating agents (latency: times slower).
    ratio: float = _number(0)
    #: Median of value - baseline among them (error rate: more calls failing).
    shift: float = _number()
    #: Median robust z-score among them.
    median_z: float = _number()
    #: The z-score an agent needed to count as deviating.
    threshold: float = _number(0)


class AffectedAgent(Payload):
    """An agent that deviated with its machine: its value against its own baseline."""

    agent_id: Id
    signal: MachineSignal
    value: float = _number()
    baseline: float = _number()
    z: float = _number()


class MachineFinding(Payload):
    #: The pod the finding is recorded on (for a cluster finding: the pod whose report tipped it).
    pod_id: Id
    scope: Scope
    #: Pods that deviated: the pod itself, or every pod of a cluster finding known so far.
    pods: list[Id] = Field(min_length=1, max_length=MAX_NAMED)
    #: Which detector found it.
    detector: str = Field(min_length=1, max_length=64)
    severity: Severity
    #: slowdown (latency up everywhere: CPU starvation, a slow NATS) or error_burst.
    kind: str = Field(min_length=1, max_length=64)
    window_start: datetime
    window_end: datetime
    deviations: list[MachineDeviation] = Field(min_length=1, max_length=8)
    #: The agents affected, the most deviating first (at most `MAX_NAMED`; `deviations` counts all).
    agents: list[AffectedAgent] = Field(default_factory=list, max_length=MAX_NAMED)
    #: Agent findings the machine explained and the Observer therefore did not report.
    withheld: int = Field(default=0, ge=0, le=MAX_AGENTS)
    summary: str = Field(default="", max_length=1000)


@REGISTRY.command("pod", "report_anomaly")
class ReportPodAnomaly(MachineFinding):
    """The Observer reports a machine-wide finding; the Hive records it on the pod."""


@REGISTRY.event("pod", "anomaly_detected")
class PodAnomalyDetected(MachineFinding):
    """A recorded machine-wide finding; `anomaly_id` is the report's id. Never acted on by
    healing: it is about the machine, not about any agent on it."""

    anomaly_id: Id
