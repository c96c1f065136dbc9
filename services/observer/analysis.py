"""The Observer's pure core: stream messages in, closed windows and findings out.

`Observatory.apply_metrics(seq, time, body)` and `apply_log(seq, body)` fold one message of
SWARM_METRICS / SWARM_LOGS into per-agent state and return what closed. Every agent (and every
deployment centroid) remembers the last sequence of each stream it applied, so a replay from an
older position skips what an agent has applied already and counts nothing twice.

The state has an exact JSON form: `AgentState.window_json()` (windows in progress and counts,
changed by every message), `AgentAnalysis.to_json()` (the detectors, changed only when a window
closes) and `DeploymentState.to_json()`. The service keeps these in stream-processing tables
and marks what a message changed in `dirty_agents`, `dirty_analyses` and `dirty_deployments`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from schemas.observer import ReportAnomaly, SignalEvidence
from services.observer.detectors import (
    Centroid,
    MultivariateTrees,
    Profile,
    RobustZ,
    SignalScore,
)
from services.observer.features import (
    LogSample,
    MalformedSample,
    ReplicaSample,
    Window,
    WindowAggregator,
    parse_log,
    parse_metrics,
)
from services.observer.scoring import (
    AdaptiveThreshold,
    DetectorConfig,
    HoldDown,
    classify,
    combine,
    severity,
)

log = structlog.get_logger(__name__)

DETECTOR = "robust-z+hst"


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

    @property
    def id(self) -> str:
        """Deterministic, so a finding re-sent after a restart is dropped as a duplicate."""
        key = f"{self.agent_id}|{self.window_end:.3f}|{self.kind}".encode()
        return "obs-" + hashlib.sha256(key).hexdigest()[:40]

    @property
    def severity(self) -> str:
        top_z = max((s.score for s in self.evidence), default=0.0)
        return severity(self.score, self.kind, top_z, self.evidence_z)

    def summary(self) -> str:
        parts = [
            f"{s.signal} {s.value:.4g} vs baseline {s.baseline:.4g} (z={s.z:.1f})"
            for s in self.evidence
            if s.signal != "combined"
        ]
        return (f"{self.kind} in {self.namespace}/{self.name}: " + "; ".join(parts))[:1000]

    def report(self) -> ReportAnomaly:
        signals = [
            SignalEvidence(
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
            detector=DETECTOR,
            score=min(1.0, max(0.0, self.score)),
            severity=self.severity,  # type: ignore[arg-type]
            kind=self.kind,
            window_start=datetime.fromtimestamp(self.window_start, UTC),
            window_end=datetime.fromtimestamp(self.window_end, UTC),
            signals=signals[:32],
            summary=self.summary(),
        )


@dataclass(frozen=True, slots=True)
class Observation:
    """What the detectors made of one closed window."""

    window: Window
    vector: list[float]
    scores: dict[str, SignalScore]
    trees: float
    score: float
    threshold: float
    flagged: bool
    finding: Finding | None


@dataclass(slots=True)
class AgentAnalysis:
    """All detectors of one agent."""

    config: DetectorConfig
    baselines: dict[str, RobustZ] = field(default_factory=dict)
    trees: MultivariateTrees = field(default_factory=MultivariateTrees)
    threshold: AdaptiveThreshold = field(init=False)
    profile: Profile = field(default_factory=Profile)
    incident: HoldDown = field(init=False)
    windows: int = 0

    def __post_init__(self) -> None:
        self.threshold = AdaptiveThreshold(self.config)
        self.incident = HoldDown(self.config.quiet_windows)

    def reconfigure(self, config: DetectorConfig) -> None:
        """Adopt new settings (after a restart with other SWARM_OBSERVER_* values) and keep
        what was learnt."""
        self.config = config
        self.threshold.config = config
        self.incident.quiet = config.quiet_windows
        for baseline in self.baselines.values():
            baseline.size = config.baseline_windows
            baseline.relative_floor = config.relative_floor

    def to_json(self) -> dict[str, Any]:
        return {
            "baselines": {name: b.to_json() for name, b in self.baselines.items()},
            "trees": self.trees.to_json(),
            "threshold": self.threshold.to_json(),
            "profile": self.profile.to_json(),
            "incident": self.incident.to_json(),
            "windows": self.windows,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], config: DetectorConfig) -> AgentAnalysis:
        analysis = cls(
            config,
            {name: RobustZ.from_json(b) for name, b in doc["baselines"].items()},
            MultivariateTrees.from_json(doc["trees"]),
            profile=Profile.from_json(doc["profile"]),
            windows=doc["windows"],
        )
        analysis.threshold = AdaptiveThreshold.from_json(doc["threshold"], config)
        analysis.incident = HoldDown.from_json(doc["incident"])
        analysis.reconfigure(config)
        return analysis

    def _baseline(self, signal: str) -> RobustZ:
        baseline = self.baselines.get(signal)
        if baseline is None:
            baseline = self.baselines[signal] = RobustZ(
                signal,
                size=self.config.baseline_windows,
                relative_floor=self.config.relative_floor,
            )
        return baseline

    def vector(self, window: Window) -> list[float]:
        """The behaviour vector this window leads to (the profile is updated in `observe`)."""
        trial = Profile(self.profile.half_calls, dict(self.profile.signals))
        return trial.learn(window.signals(), window.calls)

    def observe(self, window: Window, distance: float | None) -> Observation:
        signals = window.signals()
        vector = self.profile.learn(signals, window.calls)
        if distance is not None:
            signals["behaviour_distance"] = distance
        scores = {
            name: self._baseline(name).score(value, window.calls, window.seconds)
            for name, value in signals.items()
        }
        warm = self.windows >= self.config.warmup_windows
        ready = {
            n: s for n, s in scores.items() if self._baseline(n).ready(self.config.warmup_windows)
        }
        trees = self.trees.score(scores) if warm else 0.0
        score = combine(ready, trees if warm else None, self.config)
        threshold = self.threshold.value()
        flagged = warm and score > threshold
        kind = classify(ready, self.config) if flagged else "unknown"
        finding = None
        if self.incident.step(flagged, kind):
            evidence = sorted(
                (s for s in ready.values() if s.score >= self.config.evidence_z),
                key=lambda s: -s.score,
            )
            if not evidence:
                evidence = [max(ready.values(), key=lambda s: s.score)]
            finding = Finding(
                agent_id=window.agent_id,
                namespace=window.namespace,
                name=window.name,
                window_start=window.start,
                window_end=window.end,
                score=score,
                threshold=threshold,
                trees=trees,
                kind=kind,
                evidence=tuple(evidence[:16]),
                evidence_z=self.config.evidence_z,
            )
        # Learn after scoring. Baselines always learn (winsorised), so a lasting change becomes
        # the new normal; trees and threshold learn from normal windows only, so an incident
        # does not teach them that it is normal.
        for name, value in signals.items():
            self._baseline(name).learn(value, scores[name])
        if not flagged:
            self.trees.learn(scores)
            if warm:
                self.threshold.learn(score)
        self.windows += 1
        return Observation(window, vector, scores, trees, score, threshold, flagged, finding)


@dataclass(slots=True)
class AgentState:
    """Everything the Observer keeps about one agent (in two table values: `window_json()` and
    `analysis.to_json()`)."""

    aggregator: WindowAggregator
    analysis: AgentAnalysis
    metrics_seq: int = 0
    logs_seq: int = 0
    #: Closed windows and the calls in them, for audits (the kill test recounts these).
    windows: int = 0
    calls: int = 0
    findings: int = 0

    def window_json(self) -> dict[str, Any]:
        """Everything but the detectors (`analysis.to_json()`), which change less often."""
        return {
            "aggregator": self.aggregator.to_json(),
            "metrics_seq": self.metrics_seq,
            "logs_seq": self.logs_seq,
            "windows": self.windows,
            "calls": self.calls,
            "findings": self.findings,
        }

    @classmethod
    def from_json(
        cls, windows: dict[str, Any], analysis: dict[str, Any] | None, config: DetectorConfig
    ) -> AgentState:
        detectors = (
            AgentAnalysis(config) if analysis is None else AgentAnalysis.from_json(analysis, config)
        )
        return cls(
            WindowAggregator.from_json(windows["aggregator"]),
            detectors,
            windows["metrics_seq"],
            windows["logs_seq"],
            windows["windows"],
            windows["calls"],
            windows["findings"],
        )


@dataclass(slots=True)
class DeploymentState:
    """A namespace's normal behaviour: the centroid its agents' distances are measured from."""

    centroid: Centroid = field(default_factory=Centroid)
    metrics_seq: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"centroid": self.centroid.to_json(), "metrics_seq": self.metrics_seq}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DeploymentState:
        return cls(Centroid.from_json(doc["centroid"]), doc["metrics_seq"])


@dataclass(slots=True)
class Observatory:
    config: DetectorConfig
    window_s: float
    agents: dict[str, AgentState] = field(default_factory=dict)
    deployments: dict[str, DeploymentState] = field(default_factory=dict)
    #: What changed since the service last saved it: agents' windows and counts, agents'
    #: detectors (when a window closed), deployments' centroids.
    dirty_agents: set[str] = field(default_factory=set)
    dirty_analyses: set[str] = field(default_factory=set)
    dirty_deployments: set[str] = field(default_factory=set)
    malformed: int = 0

    def _agent(self, agent_id: str, namespace: str, name: str) -> AgentState:
        state = self.agents.get(agent_id)
        if state is None:
            state = self.agents[agent_id] = AgentState(
                WindowAggregator(agent_id, namespace, name, self.window_s),
                AgentAnalysis(self.config),
            )
        return state

    def _deployment(self, namespace: str) -> DeploymentState:
        state = self.deployments.get(namespace)
        if state is None:
            state = self.deployments[namespace] = DeploymentState()
        return state

    def apply_metrics(self, seq: int, time: float, body: bytes) -> list[Observation]:
        try:
            samples = parse_metrics(body, time)
        except MalformedSample as exc:
            self.malformed += 1
            log.warning("malformed metrics skipped", seq=seq, error=str(exc))
            return []
        return self.apply_samples(seq, samples)

    def apply_samples(self, seq: int, samples: list[ReplicaSample]) -> list[Observation]:
        """`apply_metrics` on the samples of one message, parsed already."""
        by_agent: dict[str, list[ReplicaSample]] = {}
        for sample in samples:
            by_agent.setdefault(sample.agent_id, []).append(sample)
        observations = []
        for agent_id, mine in by_agent.items():
            state = self._agent(agent_id, mine[0].namespace, mine[0].name)
            if state.metrics_seq >= seq:
                continue  # applied already (a replay from an older position)
            state.metrics_seq = seq
            self.dirty_agents.add(agent_id)
            for sample in mine:
                closed = state.aggregator.add(sample)
                if closed is not None:
                    observations.append(self._close(state, closed, seq))
        for observation in observations:
            namespace = observation.window.namespace
            deployment = self.deployments[namespace]
            if deployment.metrics_seq < seq:
                deployment.metrics_seq = seq
                self.dirty_deployments.add(namespace)
        return observations

    def _close(self, state: AgentState, window: Window, seq: int) -> Observation:
        deployment = self._deployment(window.namespace)
        # A window without calls says nothing about what the agent's calls look like.
        distance = (
            deployment.centroid.distance(state.analysis.vector(window)) if window.calls else None
        )
        observation = state.analysis.observe(window, distance)
        self.dirty_analyses.add(window.agent_id)
        state.windows += 1
        state.calls += window.calls
        if observation.finding is not None:
            state.findings += 1
        # Every agent of the message teaches the centroid, unless a replay reaches a message
        # the centroid has applied already.
        if deployment.metrics_seq < seq and window.calls and not observation.flagged:
            deployment.centroid.learn(observation.vector)
            self.dirty_deployments.add(window.namespace)
        return observation

    def apply_log(self, seq: int, body: bytes) -> None:
        try:
            line = parse_log(body)
        except MalformedSample as exc:
            self.malformed += 1
            log.warning("malformed log line skipped", seq=seq, error=str(exc))
            return
        self.apply_line(seq, line)

    def apply_line(self, seq: int, line: LogSample) -> None:
        """`apply_log` on a line parsed already."""
        state = self._agent(line.agent_id, line.namespace, line.name)
        if state.logs_seq >= seq:
            return
        state.aggregator.add_log(line)
        state.logs_seq = seq
        self.dirty_agents.add(line.agent_id)
