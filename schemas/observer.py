"""The Observer's findings: anomalies with their evidence.

The Observer never changes state itself. It reports what it saw as a command (`anomaly.report`);
the Hive records it as an event on the agent's aggregate, so findings are on the audit log next
to what they are about, and the Hive's policies (reputation, quarantine, restart, rollback) react
to the recorded event, not to the Observer's say-so.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.envelope import Payload
from schemas.registry import REGISTRY
from schemas.specs import Id

#: Bound of a signal's value, baseline, score and threshold: far beyond any metric a pod reports
#: (fuel per call, latency, bytes, rates), but finite, so the evidence survives the log.
MAX_SIGNAL = 1e30

Severity = Literal["info", "warning", "critical"]

#: A latency that rose slowly and kept rising, which no single window shows (a CUSUM over
#: windows, not a z-score): a warning, never a reason to stop an agent.
LATENCY_DRIFT = "latency_drift"

#: The kinds of agent findings the Observer names (`AnomalyFinding.kind`). The field is free
#: text on the wire, so a consumer reads kinds newer than it knows.
FINDING_KINDS: tuple[str, ...] = (
    "loop",
    "cost_blowup",
    "latency_spike",
    "error_burst",
    LATENCY_DRIFT,
    "memory_growth",
    "backlog",
    "log_flood",
    "behaviour_drift",
    "unknown",
)

#: The signals a window of an agent's metrics yields, in the order of its behaviour vector.
WindowSignal = Literal[
    "fuel",
    "latency",
    "error_rate",
    "message_rate",
    "memory",
    "queue_depth",
    "log_rate",
]
#: Behaviour signals the detectors score (one per metric series, plus derived ones).
Signal = Literal[
    WindowSignal,
    "logs_per_call",
    "queue_wait",
    "behaviour_distance",
    "combined",
]


class SignalEvidence(Payload):
    """One signal's part in a finding: what was seen against what is normal for this agent."""

    signal: Signal
    #: The value seen in the window (for example mean fuel per call).
    value: float = Field(ge=-MAX_SIGNAL, le=MAX_SIGNAL)
    #: What is normal for this agent (the detector's baseline, for example a rolling median).
    baseline: float = Field(ge=-MAX_SIGNAL, le=MAX_SIGNAL)
    #: The detector's score for this signal (for robust z-scores: |x - median| / (1.4826 MAD)).
    score: float = Field(ge=0, le=MAX_SIGNAL)
    #: The threshold the score was compared against (adaptive, so it is recorded).
    threshold: float = Field(ge=0, le=MAX_SIGNAL)


class AnomalyFinding(Payload):
    agent_id: Id
    #: The replica the finding is about; None when it is about the agent as a whole.
    replica_id: Id | None = None
    #: Which detector found it (for example `robust-z`, `half-space-trees`, `combined`).
    detector: str = Field(min_length=1, max_length=64)
    #: Combined score in [0, 1]: 1 is certainly anomalous.
    score: float = Field(ge=0, le=1)
    severity: Severity
    #: Kind of misbehaviour when the detector can tell (one of `FINDING_KINDS`, or a newer one).
    kind: str = Field(default="unknown", max_length=64)
    window_start: datetime
    window_end: datetime
    signals: list[SignalEvidence] = Field(min_length=1, max_length=32)
    summary: str = Field(default="", max_length=1000)


@REGISTRY.command("anomaly", "report")
class ReportAnomaly(AnomalyFinding):
    """The Observer reports a finding; the Hive records it on the agent (AnomalyDetected)."""


@REGISTRY.event("agent", "anomaly_detected")
class AnomalyDetected(AnomalyFinding):
    """A recorded finding about an agent, with its evidence; `anomaly_id` is the report's id."""

    anomaly_id: Id
