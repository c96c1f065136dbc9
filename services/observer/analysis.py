"""The Observer's pure core: stream messages in, closed windows and findings out.

`Observatory.apply_metrics(seq, time, body)` and `apply_log(seq, body)` fold one message of
SWARM_METRICS / SWARM_LOGS into per-agent state and return what closed. Every agent (and every
deployment centroid) remembers the last sequence of each stream it applied, so a replay from an
older position skips what an agent has applied already and counts nothing twice.

The windows a pod's message closes are then judged together (`machine.MachineWatch`): when many
of its agents deviate at once, the finding is about the machine (`machine_findings`), and the
agent findings it explains are withheld.

The state has an exact JSON form: `AgentState.window_json()` (windows in progress and counts,
changed by every message), `AgentAnalysis.to_json()` (the detectors, changed only when a window
closes), `DeploymentState.to_json()` and the machines' (`PodWatch`, `ClusterWatch`). The service
keeps these in stream-processing tables and marks what a message changed in `dirty_agents`,
`dirty_analyses`, `dirty_deployments` and `machines.dirty`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import structlog

from schemas.observer import LATENCY_DRIFT
from services.observer.detectors import (
    RELATIVE_FLOORS,
    Centroid,
    DriftCusum,
    LoadModel,
    MultivariateTrees,
    Profile,
    RobustZ,
    SignalScore,
)
from services.observer.features import (
    SCORED,
    LogSample,
    MalformedSample,
    ReplicaSample,
    Window,
    WindowAggregator,
    parse_log,
    parse_metrics,
)

# Re-exported: `Finding` has been importable from here since before it had a module of its own.
from services.observer.finding import Finding as Finding
from services.observer.machine import MachineConfig, MachineFinding, MachineWatch
from services.observer.scoring import (
    CRITICAL_SIGNALS,
    AdaptiveThreshold,
    DetectorConfig,
    HoldDown,
    classify,
    combine,
    severity,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Observation:
    """What the detectors made of one closed window."""

    window: Window
    #: The behaviour vector stored for similarity search (`behaviour.py`).
    vector: list[float]
    scores: dict[str, SignalScore]
    trees: float
    score: float
    threshold: float
    flagged: bool
    finding: Finding | None
    #: The signals that counted as evidence: baseline warm, and not explained by load.
    eligible: frozenset[str] = frozenset()
    #: The per-call behaviour shape the deployment's centroid learns (`detectors.shape_vector`).
    shape: list[float] | None = None
    #: The agent's incident state before this window, to put back when the finding turns out
    #: to be explained by its machine (`machine.py`).
    incident_before: dict[str, Any] | None = None


#: Signals that rise with load (a message waits longer in a busier mailbox): not evidence in a
#: window far busier than the agent usually is (`DetectorConfig.load_step`). Latency is judged
#: against this agent's latency at the window's load (`detectors.LoadModel`).
LOAD_DEPENDENT = frozenset({"queue_wait"})


@dataclass(slots=True)
class AgentAnalysis:
    """All detectors of one agent."""

    config: DetectorConfig
    #: Rolling baselines by signal (latency has its load model instead).
    baselines: dict[str, RobustZ] = field(default_factory=dict)
    latency: LoadModel = field(default_factory=LoadModel)
    #: A slow rise of latency against the load model, over windows (`detectors.DriftCusum`).
    drift: DriftCusum = field(default_factory=DriftCusum)
    trees: MultivariateTrees = field(default_factory=MultivariateTrees)
    threshold: AdaptiveThreshold = field(init=False)
    profile: Profile = field(default_factory=Profile)
    incident: HoldDown = field(init=False)
    windows: int = 0
    #: Windows with calls (the critical warm-up counts these: an idle agent learns nothing).
    active: int = 0
    #: The memory score (z, upward) of the last window whose memory was scored.
    memory_before: float = 0.0

    def __post_init__(self) -> None:
        self.threshold = AdaptiveThreshold(self.config)
        self.incident = HoldDown(self.config.quiet_windows)
        self._configure_drift()

    def _configure_drift(self) -> None:
        config = self.config
        self.drift.slack = config.drift_slack
        self.drift.limit = config.drift_limit
        self.drift.cap = config.drift_cap
        self.drift.weight = config.drift_weight
        self.drift.warmup = config.critical_warmup_windows

    def reconfigure(self, config: DetectorConfig) -> None:
        """Adopt new settings (after a restart with other SWARM_OBSERVER_* values) and keep
        what was learnt."""
        self.config = config
        self.threshold.config = config
        self.incident.quiet = config.quiet_windows
        for baseline in self.baselines.values():
            baseline.size = config.baseline_windows
            baseline.relative_floor = RELATIVE_FLOORS.get(baseline.signal, config.relative_floor)
        self.latency.size = config.baseline_windows
        self.latency.relative_floor = config.relative_floor
        self._configure_drift()

    def to_json(self) -> dict[str, Any]:
        return {
            "baselines": {name: b.to_json() for name, b in self.baselines.items()},
            "latency": self.latency.to_json(),
            "drift": self.drift.to_json(),
            "trees": self.trees.to_json(),
            "threshold": self.threshold.to_json(),
            "profile": self.profile.to_json(),
            "incident": self.incident.to_json(),
            "windows": self.windows,
            "active": self.active,
            "memory_before": self.memory_before,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], config: DetectorConfig) -> AgentAnalysis:
        analysis = cls(
            config,
            # Baselines of signals no longer scored (from an older Observer) are dropped.
            {key: RobustZ.from_json(b) for key, b in doc["baselines"].items() if key in _KEPT},
            LoadModel.from_json(doc["latency"]) if "latency" in doc else LoadModel(),
            DriftCusum.from_json(doc["drift"]) if "drift" in doc else DriftCusum(),
            MultivariateTrees.from_json(doc["trees"]),
            profile=Profile.from_json(doc["profile"]),
            windows=doc["windows"],
            active=doc.get("active", doc["windows"]),
            memory_before=doc.get("memory_before", 0.0),
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
                relative_floor=RELATIVE_FLOORS.get(signal, self.config.relative_floor),
            )
        return baseline

    def shape(self, window: Window) -> list[float]:
        """The behaviour shape this window leads to (the profile is updated in `observe`)."""
        trial = Profile(self.profile.half_calls, dict(self.profile.signals))
        trial.learn(window.signals(), window.calls)
        return trial.shape()

    def observe(
        self, window: Window, distance: float | None, machine_slow: bool = False
    ) -> Observation:
        """Score a closed window, then learn from it. `machine_slow`: the window falls in a
        machine-wide slowdown of its pod, so its latency is not learnt (it is the machine's)."""
        config = self.config
        signals = window.signals()
        vector = self.profile.learn(signals, window.calls)
        shape = self.profile.shape()
        if distance is not None:
            signals["behaviour_distance"] = distance
        # The load is context: how busy the agent usually is decides whether a rise of its
        # latency or mailbox waits may be the load's doing, and is never itself a finding.
        load_baseline = self._baseline("message_rate")
        usual_load = load_baseline.median() if load_baseline.values else None
        busier = usual_load is not None and window.load > config.load_step * max(
            usual_load, 1.0 / window.seconds
        )
        scores: dict[str, SignalScore] = {}
        eligible: set[str] = set()
        learn: list[tuple[RobustZ, float, SignalScore]] = []
        for name, value in signals.items():
            if name not in _SCORED:
                continue
            if name == "latency":
                model = self.latency
                scored = model.score(value, window.calls, window.seconds)
                # Much busier than usual: the model knows what latency this load brings only
                # once it has seen it a few times (until then the load could explain a rise).
                ready = model.ready(config.warmup_windows) and (
                    not busier
                    or model.seen_at(window.load, config.load_step) >= config.warmup_windows
                )
            else:
                baseline = self._baseline(name)
                scored = baseline.score(value, window.calls, window.seconds)
                learn.append((baseline, value, scored))
                ready = baseline.ready(config.warmup_windows) and not (
                    name in LOAD_DEPENDENT and busier
                )
            scores[name] = scored
            if ready:
                eligible.add(name)
        # Unclipped: the usual load is simply the median of recent windows' loads.
        load_baseline.learn(window.load)
        # A slow rise of latency, over windows. A window of a slow machine says nothing about
        # the agent (its latency is not learnt either): the sum starts again after it.
        drifting = False
        if machine_slow:
            self.drift.reset()
        elif "latency" in eligible:
            drifting = self.drift.step(scores["latency"])
        ready_scores = {n: scores[n] for n in eligible}
        warm = self.windows >= config.warmup_windows
        trees = self.trees.score(scores) if warm else 0.0
        score = combine(ready_scores, trees if warm else None, config)
        threshold = self.threshold.value()
        over = warm and score > threshold and bool(ready_scores)
        # Memory far above its baseline, after a window above it too, is a finding on its own
        # (`DetectorConfig.memory_z`), before the combined score, which a lone signal reaches
        # only further out, passes.
        memory = ready_scores.get("memory")
        growing = False
        if memory is not None:
            growing = (
                warm
                and memory.score >= config.memory_z
                and self.memory_before >= config.memory_z_before
            )
            self.memory_before = memory.score
        drifting = warm and drifting
        flagged = over or drifting or growing
        kind = classify(ready_scores, config) if over else "unknown"
        if drifting and kind == "unknown":
            kind = LATENCY_DRIFT
        elif growing and kind == "unknown":
            kind = "memory_growth"
        critical_ok = self.active >= config.critical_warmup_windows
        finding = None
        before = self.incident.to_json()
        # Severity weighs only what can make a finding critical (not a backlog or log volume).
        critical = {n: s for n, s in ready_scores.items() if n in CRITICAL_SIGNALS}
        critical_score = combine(critical, trees if warm else None, config)
        # A drift or a memory rise alone is a warning: only the combined score's strong evidence
        # can make a finding critical.
        if over:
            top_z = max((s.score for s in critical.values()), default=0.0)
            level = severity(critical_score, kind, top_z, config.evidence_z, critical_ok)
        else:
            level = "warning"
        # A drift keeps its incident open: its windows are rarely at evidence level one by one.
        calm = (
            max((x.score for x in ready_scores.values()), default=0.0) < config.evidence_z
            and not drifting
        )
        if self.incident.step(flagged, kind, level, calm):
            evidence = sorted(
                (s for s in ready_scores.values() if s.score >= config.evidence_z),
                key=lambda s: -s.score,
            )
            if kind == LATENCY_DRIFT:
                evidence = [scores["latency"], *(s for s in evidence if s.signal != "latency")]
            if not evidence:
                evidence = [max(ready_scores.values(), key=lambda s: s.score)]
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
                evidence_z=config.evidence_z,
                warm=critical_ok,
                critical_score=critical_score,
                drift=self.drift.total if drifting else 0.0,
                drift_limit=self.drift.limit if drifting else 0.0,
                drift_windows=self.drift.rising if drifting else 0,
            )
        # Learn after scoring. Baselines always learn (winsorised), so a lasting change becomes
        # the new normal; trees and threshold learn from normal windows only, so an incident
        # does not teach them that it is normal.
        for baseline, value, scored_ in learn:
            baseline.learn(value, scored_)
        if "latency" in scores and not machine_slow:
            self.latency.learn(signals["latency"], window.calls, window.seconds, scores["latency"])
        if not flagged:
            self.trees.learn(scores)
            # Only calm windows (no signal at evidence level) teach the threshold: a slow drift
            # would otherwise raise it as it goes, and never be flagged.
            if warm and calm:
                self.threshold.learn(score)
        self.windows += 1
        if window.calls:
            self.active += 1
        return Observation(
            window,
            vector,
            scores,
            trees,
            score,
            threshold,
            flagged,
            finding,
            frozenset(eligible),
            shape,
            before,
        )


#: Signals the detectors score (the load is learnt as context under `message_rate`).
_SCORED = frozenset({*SCORED, "behaviour_distance"})
_KEPT = _SCORED | {"message_rate"}


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
    #: Machine-wide deviations (per pod and for the cluster; dirty keys in `machines.dirty`).
    machines: MachineWatch = field(default_factory=MachineWatch)
    #: The machine-wide findings of the last message applied (`apply_samples`).
    machine_findings: list[MachineFinding] = field(default_factory=list)
    #: Findings the last message applied held back for a window (`held`), and findings of
    #: earlier windows it reported after all (`released`; see `apply_samples`).
    held: list[Finding] = field(default_factory=list)
    released: list[Finding] = field(default_factory=list)
    machine_config: MachineConfig = field(default_factory=MachineConfig)

    def __post_init__(self) -> None:
        self.machines.config = self.machine_config
        self.machines.evidence_z = self.config.evidence_z
        self.machines.window_s = self.window_s

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
        """`apply_metrics` on the samples of one message, parsed already.

        Returns the observations of the windows the message closed, without the findings their
        machine explains or holds back for a window (`machine.py`, Timing); the machine-wide
        findings, the findings held back now, and those held at the pod's previous assessment
        and reported now are in `machine_findings`, `held` and `released` until the next
        message.
        """
        self.machine_findings = []
        self.held, self.released = [], []
        pod_id = samples[0].pod_id if samples else ""
        # The pod's loop lag counts toward the windows it closes, so it is taken in first.
        fresh = bool(pod_id) and self.machines.note(
            pod_id, seq, samples[0].time, samples[0].loop_lag_ms
        )
        by_agent: dict[str, list[ReplicaSample]] = {}
        for sample in samples:
            by_agent.setdefault(sample.agent_id, []).append(sample)
        observations = []
        present: set[str] = set()
        for agent_id, mine in by_agent.items():
            state = self._agent(agent_id, mine[0].namespace, mine[0].name)
            if state.metrics_seq >= seq:
                continue  # applied already (a replay from an older position)
            state.metrics_seq = seq
            present.add(agent_id)
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
        if observations and fresh:
            observations = self._machine(pod_id, observations, present)
        return observations

    def _machine(
        self, pod_id: str, observations: list[Observation], present: set[str]
    ) -> list[Observation]:
        """Let the pod's machine explain what it can: withhold those agent findings (and put
        back the agents' incident state, so a finding of their own is not swallowed later),
        hold back those it may explain one window later, release those it did not."""
        assessment = self.machines.assess(pod_id, observations)
        self.machine_findings = assessment.findings
        self.held = [o.finding for o in assessment.held if o.finding is not None]
        self.released = [h.finding for h in assessment.released]
        hidden = {id(o) for o in (*assessment.withheld, *assessment.held)}
        withheld = {id(o) for o in assessment.withheld}
        outliers = {id(o) for o in assessment.outliers}
        out = []
        for o in observations:
            if id(o) in outliers and o.finding is not None:
                out.append(
                    dataclasses.replace(
                        o, finding=dataclasses.replace(o.finding, machine_incident=True)
                    )
                )
                continue
            if id(o) not in hidden:
                out.append(o)
                continue
            if id(o) in withheld:
                self._unfind(o.window.agent_id, o.incident_before)
            out.append(dataclasses.replace(o, finding=None))
        reported = {o.window.agent_id for o in out if o.finding is not None}
        for held in assessment.explained:
            agent_id = held.finding.agent_id
            # Only the agents of this message are saved with it; an agent reported now keeps
            # the incident state its new finding set.
            if agent_id in present and agent_id not in reported:
                self._unfind(agent_id, held.incident_before)
        return out

    def _unfind(self, agent_id: str, incident_before: dict[str, Any] | None) -> None:
        """A finding of the agent's is withheld: it is not counted, and the agent's incident is
        as it was before it."""
        state = self.agents[agent_id]
        state.findings -= 1
        if incident_before is not None:
            state.analysis.incident = HoldDown.from_json(incident_before)

    def _close(self, state: AgentState, window: Window, seq: int) -> Observation:
        deployment = self._deployment(window.namespace)
        # A window without calls says nothing about what the agent's calls look like.
        distance = (
            deployment.centroid.distance(state.analysis.shape(window)) if window.calls else None
        )
        slow = self.machines.slowed(window.pods, window.end, window.seconds)
        observation = state.analysis.observe(window, distance, slow)
        self.dirty_analyses.add(window.agent_id)
        state.windows += 1
        state.calls += window.calls
        if observation.finding is not None:
            state.findings += 1
        # Every agent of the message teaches the centroid, unless a replay reaches a message
        # the centroid has applied already.
        if (
            deployment.metrics_seq < seq
            and window.calls
            and not observation.flagged
            and observation.shape is not None
        ):
            deployment.centroid.learn(observation.shape)
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
