"""A finding about one agent: the first flagged window of an incident and its evidence, as the
Observer reports it to the Hive (`ReportAnomaly`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from schemas.observer import LATENCY_DRIFT, ReportAnomaly, SignalEvidence
from services.observer.detectors import SignalScore
from services.observer.scoring import CRITICAL_SIGNALS, severity

DETECTOR = "robust-z+hst"
#: The detector of a latency drift (`detectors.DriftCusum`).
DRIFT_DETECTOR = "cusum"


@dataclass(frozen=True, slots=True)
class Finding:
    """One incident's first flagged window, with the evidence that flagged it."""

    agent_id: str
    namespace: str
    name: str
    window_start: float
    window_end: float
    score: float
    threshold: float
    trees: float
    kind: str
    evidence: tuple[SignalScore, ...]
    #: The z-score a signal needs to count as evidence (recorded as its threshold).
    evidence_z: float = 4.0
    #: The agent was past its critical warm-up (before it, a finding is a warning at most).
    warm: bool = True
    #: The combined score over the signals that can make a finding critical (`severity`).
    critical_score: float = 0.0
    #: When latency drifted in the window: the CUSUM's sum (in spreads), the limit it passed,
    #: and the windows it has been rising (0 otherwise).
    drift: float = 0.0
    drift_limit: float = 0.0
    drift_windows: int = 0
    #: Reported while its machine had an incident open, on machine signals only (`machine.py`):
    #: the machine explains part of it, so it is a warning at most and never stops the agent.
    machine_incident: bool = False

    def to_json(self) -> dict[str, Any]:
        """Exact (floats round-trip): a finding held back for a window is kept in a table."""
        doc = {f: getattr(self, f) for f in _FIELDS}
        doc["evidence"] = [s.to_json() for s in self.evidence]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Finding:
        # Fields an older Observer did not write (a finding it held) keep their defaults.
        values = {f: doc[f] for f in _FIELDS if f in doc}
        values["evidence"] = tuple(SignalScore.from_json(s) for s in doc["evidence"])
        return cls(**values)

    @property
    def id(self) -> str:
        """Deterministic, so a finding re-sent after a restart is dropped as a duplicate."""
        key = f"{self.agent_id}|{self.window_end:.3f}|{self.kind}".encode()
        return "obs-" + hashlib.sha256(key).hexdigest()[:40]

    @property
    def severity(self) -> str:
        top_z = max((s.score for s in self.evidence if s.signal in CRITICAL_SIGNALS), default=0.0)
        warm = self.warm and not self.machine_incident
        return severity(self.critical_score, self.kind, top_z, self.evidence_z, warm)

    def summary(self) -> str:
        parts = [
            f"{s.signal} {s.value:.4g} vs baseline {s.baseline:.4g} (z={s.z:.1f})"
            for s in self.evidence
            if s.signal != "combined"
        ]
        if self.drift_limit:
            parts.append(
                f"latency rising for {self.drift_windows} windows "
                f"(cusum {self.drift:.1f} > {self.drift_limit:g})"
            )
        return (f"{self.kind} in {self.namespace}/{self.name}: " + "; ".join(parts))[:1000]

    def report(self) -> ReportAnomaly:
        drift = self.kind == LATENCY_DRIFT and self.drift_limit > 0
        signals = [
            # A drift's latency is judged by the CUSUM's sum against its limit.
            SignalEvidence(
                signal=s.signal,  # type: ignore[arg-type]
                value=s.value,
                baseline=s.baseline,
                score=round(self.drift, 4),
                threshold=self.drift_limit,
            )
            if drift and s.signal == "latency"
            else SignalEvidence(
                signal=s.signal,  # type: ignore[arg-type]
                value=s.value,
                baseline=s.baseline,
                score=round(s.score, 4),
                threshold=self.evidence_z,
            )
            for s in self.evidence
        ]
        signals.append(
            SignalEvidence(
                signal="combined",
                value=round(self.score, 4),
                baseline=round(self.threshold, 4),
                score=round(self.score, 4),
                threshold=round(self.threshold, 4),
            )
        )
        return ReportAnomaly(
            agent_id=self.agent_id,
            detector=DRIFT_DETECTOR if drift else DETECTOR,
            score=min(1.0, max(0.0, self.score)),
            severity=self.severity,  # type: ignore[arg-type]
            kind=self.kind,
            window_start=datetime.fromtimestamp(self.window_start, UTC),
            window_end=datetime.fromtimestamp(self.window_end, UTC),
            signals=signals[:32],
            summary=self.summary(),
        )


_FIELDS = tuple(f.name for f in fields(Finding))

__all__ = ["DETECTOR", "DRIFT_DETECTOR", "Finding"]
