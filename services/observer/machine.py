"""Machine-wide causes: many agents of one pod, or of several pods, deviating together.

When a machine is starved of CPU (a noisy neighbour, a load test beside the stack) or NATS is
slow, every agent on it answers slower at once. Each agent's own detectors see a latency spike;
reporting N agent findings would blame N agents for their machine, and the Hive's healing would
stop them. A pod's metrics message closes the windows of all the agents on it at once, so the
core hands those observations here (`MachineWatch.assess`), which

- finds the signals on which many of them deviate the same way: at least `min_agents`, and
  `share` of those with calls and a warm baseline, each at least `deviation_z` robust z-scores
  above its own baseline (a mild deviation, well below what makes an agent finding, so a machine
  is recognised before or with its agents' findings);
- reports one finding about the pod, or about the cluster when pods deviating in the same window
  are at least `cluster_min_pods` and `cluster_share` of the pods active lately; and
- withholds the agent findings their machine explains: a finding whose evidence on machine
  signals is no worse than its machine's (divided by the machine's median ratio it would no
  longer be evidence, or it is at most `tolerance` times the machine's ratio), and whose other
  evidence could not make it critical (a backlog, a little memory: a starved machine serves
  fewer calls, so messages wait longer). An agent much slower than its machine, or that also
  fails or burns more fuel, is still reported. While a machine's incident lasts (until
  `quiet_windows` windows without deviation), its factors keep explaining, and its agents'
  latency baselines do not learn (`slowed`), so the slowdown is not taken for their normal.

Signals: latency and error rate per call, the ones a machine changes for every agent alike; not
fuel (a machine cannot make a call burn more), not memory or logs. Only upward deviations.

State is JSON (`PodWatch`, `ClusterWatch`), kept per pod and for the cluster in the Observer's
`machines` table; like the rest of the core it depends only on the order of the metrics stream,
so a replay makes the same decisions.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from schemas.machine import AffectedAgent, MachineDeviation, ReportPodAnomaly
from services.observer.detectors import SignalScore
from services.observer.scoring import CRITICAL_SIGNALS, HoldDown

if TYPE_CHECKING:
    from services.observer.analysis import Observation

DETECTOR = "machine-wide"
#: Signals a machine changes for all its agents alike, and the kind each names.
MACHINE_SIGNALS: dict[str, str] = {"latency": "slowdown", "error_rate": "error_burst"}
#: The table key of the cluster's state (pod ids are NATS tokens, which never contain `*`).
CLUSTER_KEY = "*"
#: Agents named in a finding.
_NAMED = 64


@dataclass(frozen=True, slots=True)
class MachineConfig:
    min_agents: int = 5
    share: float = 0.5
    deviation_z: float = 3.0
    #: An agent at most this many times worse than its machine's median is explained by it.
    tolerance: float = 2.0
    cluster_min_pods: int = 2
    cluster_share: float = 0.5
    quiet_windows: int = 3
    #: A pod counts as active in the cluster for this many windows after its last one.
    active_windows: int = 3
    #: A machine this many times slower (median) is critical: for people, never for healing.
    critical_ratio: float = 5.0
    #: Windows of a machine incident during which its agents' latency baselines do not learn.
    max_freeze_windows: int = 150


@dataclass(frozen=True, slots=True)
class Deviation:
    """One signal on which a machine's agents deviated together in one window."""

    signal: str
    deviating: int
    observed: int
    #: Median value / baseline among the deviating agents.
    ratio: float
    #: Median value - baseline among them.
    shift: float
    median_z: float

    def to_json(self) -> list[Any]:
        return [self.signal, self.deviating, self.observed, self.ratio, self.shift, self.median_z]

    @classmethod
    def from_json(cls, doc: list[Any]) -> Deviation:
        return cls(doc[0], int(doc[1]), int(doc[2]), float(doc[3]), float(doc[4]), float(doc[5]))

    def explains(self, score: SignalScore, evidence_z: float, tolerance: float) -> bool:
        """Whether the machine accounts for this agent's deviation on the signal."""
        if self.signal == "error_rate":
            adjusted = score.value - self.shift
            if score.value <= tolerance * max(score.baseline + self.shift, 0.0):
                return True
        else:
            adjusted = score.value / self.ratio if self.ratio > 0 else score.value
            if score.baseline > 0 and score.value <= tolerance * self.ratio * score.baseline:
                return True
        return score.z_of(adjusted) < evidence_z


def _deviations_json(deviations: Iterable[Deviation]) -> list[list[Any]]:
    return [d.to_json() for d in deviations]


def _deviations(doc: Iterable[list[Any]]) -> list[Deviation]:
    return [Deviation.from_json(d) for d in doc]


@dataclass(frozen=True, slots=True)
class Affected:
    agent_id: str
    signal: str
    value: float
    baseline: float
    z: float


@dataclass(frozen=True, slots=True)
class MachineFinding:
    """A machine-wide incident's first window: the pod (or cluster), the signals, the agents."""

    scope: str
    pod_id: str
    pods: tuple[str, ...]
    window_start: float
    window_end: float
    deviations: tuple[Deviation, ...]
    agents: tuple[Affected, ...]
    withheld: int
    deviation_z: float = 3.0
    critical_ratio: float = 5.0

    @property
    def kind(self) -> str:
        return MACHINE_SIGNALS[self.deviations[0].signal]

    @property
    def severity(self) -> str:
        slow = [d.ratio for d in self.deviations if d.signal == "latency"]
        return "critical" if slow and slow[0] >= self.critical_ratio else "warning"

    @property
    def id(self) -> str:
        """Deterministic, so a finding re-sent after a restart is dropped as a duplicate."""
        key = f"{self.scope}|{self.pod_id}|{self.window_end:.3f}|{self.kind}".encode()
        return "obm-" + hashlib.sha256(key).hexdigest()[:40]

    def summary(self) -> str:
        where = (
            f"pod {self.pod_id}"
            if self.scope == "pod"
            else f"{len(self.pods)} pods ({', '.join(self.pods[:8])})"
        )
        parts = []
        for d in self.deviations:
            if d.signal == "latency":
                parts.append(f"latency x{d.ratio:.2g} on {d.deviating} of {d.observed} agents")
            else:
                parts.append(f"error rate +{d.shift:.2g} on {d.deviating} of {d.observed} agents")
        cause = (
            "the machine is starved (CPU, a noisy neighbour) or its NATS is slow"
            if self.scope == "pod"
            else "cluster-wide: NATS slow or every machine loaded"
        )
        text = f"{self.kind} on {where}: {'; '.join(parts)} ({cause})"
        if self.withheld:
            text += f"; {self.withheld} agent findings it explains were not reported"
        return text[:1000]

    def report(self) -> ReportPodAnomaly:
        return ReportPodAnomaly(
            pod_id=self.pod_id,
            scope=self.scope,  # type: ignore[arg-type]
            pods=list(self.pods[:_NAMED]),
            detector=DETECTOR,
            severity=self.severity,  # type: ignore[arg-type]
            kind=self.kind,
            window_start=datetime.fromtimestamp(self.window_start, UTC),
            window_end=datetime.fromtimestamp(self.window_end, UTC),
            deviations=[
                MachineDeviation(
                    signal=d.signal,  # type: ignore[arg-type]
                    deviating=d.deviating,
                    observed=d.observed,
                    ratio=round(max(d.ratio, 0.0), 4),
                    shift=round(d.shift, 6),
                    median_z=round(d.median_z, 3),
                    threshold=self.deviation_z,
                )
                for d in self.deviations
            ],
            agents=[
                AffectedAgent(
                    agent_id=a.agent_id,
                    signal=a.signal,  # type: ignore[arg-type]
                    value=a.value,
                    baseline=a.baseline,
                    z=round(a.z, 3),
                )
                for a in self.agents[:_NAMED]
            ],
            withheld=self.withheld,
            summary=self.summary(),
        )


@dataclass(slots=True)
class PodWatch:
    """One pod's machine-wide incident: open while its agents deviate together, and the
    deviations that explain their findings while it is."""

    incident: HoldDown
    deviations: list[Deviation] = field(default_factory=list)
    #: The last metrics sequence of this pod assessed (a replay skips what is at or below).
    metrics_seq: int = 0
    #: Start of the first window of the open incident.
    since: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "incident": self.incident.to_json(),
            "deviations": _deviations_json(self.deviations),
            "metrics_seq": self.metrics_seq,
            "since": self.since,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PodWatch:
        return cls(
            HoldDown.from_json(doc["incident"]),
            _deviations(doc["deviations"]),
            int(doc["metrics_seq"]),
            float(doc.get("since", 0.0)),
        )


@dataclass(slots=True)
class ClusterWatch:
    """Which pods deviated in which recent window, which pods are active, and the cluster's
    incident (open until `quiet_windows` windows after the last window it deviated in)."""

    #: Pod -> end of the last window it had observations in.
    seen: dict[str, float] = field(default_factory=dict)
    #: Window start (as `%.3f`) -> pod -> its deviations in that window.
    tally: dict[str, dict[str, list[list[Any]]]] = field(default_factory=dict)
    #: End of the last window in which the cluster deviated (0: never).
    flagged_end: float = 0.0
    deviations: list[Deviation] = field(default_factory=list)
    #: Start of the first window of the open incident.
    since: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "seen": dict(self.seen),
            "tally": {w: {p: list(d) for p, d in pods.items()} for w, pods in self.tally.items()},
            "flagged_end": self.flagged_end,
            "deviations": _deviations_json(self.deviations),
            "since": self.since,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ClusterWatch:
        return cls(
            {p: float(t) for p, t in doc["seen"].items()},
            {w: {p: list(d) for p, d in pods.items()} for w, pods in doc["tally"].items()},
            float(doc["flagged_end"]),
            _deviations(doc["deviations"]),
            float(doc.get("since", 0.0)),
        )

    def active(self, end: float, seconds: float, quiet: int) -> bool:
        return self.flagged_end > 0 and end - self.flagged_end < quiet * seconds + 1e-9


@dataclass(frozen=True, slots=True)
class Assessment:
    """What one pod message's closed windows showed about their machine."""

    #: Observations whose finding the machine explains (to be withheld).
    withheld: list[Observation]
    findings: list[MachineFinding]


@dataclass(slots=True)
class MachineWatch:
    config: MachineConfig = field(default_factory=MachineConfig)
    evidence_z: float = 4.0
    pods: dict[str, PodWatch] = field(default_factory=dict)
    cluster: ClusterWatch = field(default_factory=ClusterWatch)
    #: Keys (pod ids, `CLUSTER_KEY`) changed since the service last saved them.
    dirty: set[str] = field(default_factory=set)

    def pod(self, pod_id: str) -> PodWatch:
        watch = self.pods.get(pod_id)
        if watch is None:
            watch = self.pods[pod_id] = PodWatch(HoldDown(self.config.quiet_windows))
        return watch

    def slowed(self, pods: Iterable[str], end: float, seconds: float) -> bool:
        """Whether a window ending at `end` falls in a machine incident of one of its pods (or
        of the cluster) that is still young: its agents' latency then is the machine's, and
        their baselines should not learn it. After `max_freeze_windows` a lasting slowdown is
        the new normal and is learnt like any other."""
        limit = self.config.max_freeze_windows * seconds
        cluster = self.cluster
        if cluster.active(end, seconds, self.config.quiet_windows) and end - cluster.since < limit:
            return True
        for pod_id in pods:
            watch = self.pods.get(pod_id)
            if watch is not None and watch.incident.active and end - watch.since < limit:
                return True
        return False

    def assess(self, pod_id: str, observations: Sequence[Observation]) -> Assessment:
        """Judge the windows a message of pod `pod_id` closed (call once per message)."""
        mine = [o for o in observations if pod_id and pod_id in o.window.pods]
        if not mine:
            return Assessment([], [])
        by_start: dict[float, list[Observation]] = {}
        for o in mine:
            by_start.setdefault(o.window.start, []).append(o)
        withheld: list[Observation] = []
        findings: list[MachineFinding] = []
        for start in sorted(by_start):
            group = by_start[start]
            out, finding = self._window(pod_id, group)
            withheld += out
            if finding is not None:
                findings.append(finding)
        self.dirty.update((pod_id, CLUSTER_KEY))
        return Assessment(withheld, findings)

    def _window(
        self, pod_id: str, group: list[Observation]
    ) -> tuple[list[Observation], MachineFinding | None]:
        config = self.config
        start, end = group[0].window.start, group[0].window.end
        seconds = end - start
        deviations = self._deviations(group)
        pod = self.pod(pod_id)
        cluster = self.cluster

        # The cluster: which pods deviated in this window, among those active lately.
        cluster.seen[pod_id] = max(cluster.seen.get(pod_id, 0.0), end)
        key = f"{start:.3f}"
        tally = cluster.tally.setdefault(key, {})
        if deviations:
            tally[pod_id] = _deviations_json(deviations)
        horizon = end - config.active_windows * seconds
        active = [p for p, t in cluster.seen.items() if t > horizon]
        deviating_pods = sorted(tally)
        cluster_was_active = cluster.active(end, seconds, config.quiet_windows)
        cluster_flag = (
            bool(deviations)
            and len(deviating_pods) >= config.cluster_min_pods
            and len(deviating_pods) >= config.cluster_share * len(active)
        )
        if cluster_flag:
            if not cluster_was_active:
                cluster.since = start
            cluster.flagged_end = max(cluster.flagged_end, end)
            cluster.deviations = _merge(_deviations(d) for d in tally.values())
        cluster_active = cluster.active(end, seconds, config.quiet_windows)
        self._prune(end, seconds)

        # What explains this pod's agents: its own deviation now, or its open incident's, or
        # the cluster's.
        explaining = {d.signal: d for d in cluster.deviations} if cluster_active else {}
        if pod.incident.active:
            explaining.update((d.signal, d) for d in pod.deviations)
        explaining.update((d.signal, d) for d in deviations)
        withheld = [o for o in group if o.finding is not None and self._explained(o, explaining)]

        new_incident = pod.incident.step(bool(deviations))
        if new_incident:
            pod.since = start
        if deviations:
            pod.deviations = deviations
        elif not pod.incident.active:
            pod.deviations = []

        scope = None
        if cluster_flag and not cluster_was_active:
            scope = "cluster"
        elif new_incident and not cluster_active:
            scope = "pod"
        if scope is None:
            return withheld, None
        shown = cluster.deviations if scope == "cluster" else deviations
        return withheld, MachineFinding(
            scope=scope,
            pod_id=pod_id,
            pods=tuple(deviating_pods) if scope == "cluster" else (pod_id,),
            window_start=start,
            window_end=end,
            deviations=tuple(shown),
            agents=self._affected(group, deviations or shown),
            withheld=len(withheld),
            deviation_z=config.deviation_z,
            critical_ratio=config.critical_ratio,
        )

    def _deviations(self, group: list[Observation]) -> list[Deviation]:
        config = self.config
        out = []
        for signal in MACHINE_SIGNALS:
            observed = [o.scores[signal] for o in group if signal in o.eligible]
            up = [s for s in observed if s.z >= config.deviation_z]
            if len(up) < config.min_agents or len(up) < config.share * len(observed):
                continue
            ratios = [s.value / s.baseline for s in up if s.baseline > 0]
            out.append(
                Deviation(
                    signal,
                    len(up),
                    len(observed),
                    statistics.median(ratios) if ratios else 1.0,
                    statistics.median(s.value - s.baseline for s in up),
                    statistics.median(s.z for s in up),
                )
            )
        return out

    def _explained(self, observation: Observation, explaining: dict[str, Deviation]) -> bool:
        """Whether the machine accounts for the finding: it has evidence on a machine signal,
        all of which the machine explains, and no other evidence that could make a finding
        critical (fuel: a machine cannot make a call burn more)."""
        finding = observation.finding
        if finding is None or not explaining:
            return False
        machine_evidence = False
        for evidence in finding.evidence:
            if evidence.signal in MACHINE_SIGNALS:
                deviation = explaining.get(evidence.signal)
                if deviation is None or not deviation.explains(
                    evidence, self.evidence_z, self.config.tolerance
                ):
                    return False
                machine_evidence = True
            elif evidence.signal in CRITICAL_SIGNALS:
                return False
        return machine_evidence

    def _affected(
        self, group: list[Observation], deviations: Sequence[Deviation]
    ) -> tuple[Affected, ...]:
        signal = deviations[0].signal
        scores = sorted(
            (
                (o.window.agent_id, o.scores[signal])
                for o in group
                if signal in o.eligible and o.scores[signal].z >= self.config.deviation_z
            ),
            key=lambda pair: (-pair[1].z, pair[0]),
        )
        return tuple(
            Affected(agent, signal, s.value, s.baseline, s.z) for agent, s in scores[:_NAMED]
        )

    def _prune(self, end: float, seconds: float) -> None:
        horizon = end - (self.config.active_windows + 1) * seconds
        cluster = self.cluster
        for key in [k for k in cluster.tally if float(k) < horizon]:
            del cluster.tally[key]
        # Pods not seen for long are gone (or moved): they no longer count as active.
        for pod in [p for p, t in cluster.seen.items() if t < end - 100 * seconds]:
            del cluster.seen[pod]


def _merge(groups: Iterable[list[Deviation]]) -> list[Deviation]:
    """One deviation per signal over several pods: counts summed, medians of the pods' medians."""
    by_signal: dict[str, list[Deviation]] = {}
    for group in groups:
        for d in group:
            by_signal.setdefault(d.signal, []).append(d)
    return [
        Deviation(
            signal,
            sum(d.deviating for d in ds),
            sum(d.observed for d in ds),
            statistics.median(d.ratio for d in ds),
            statistics.median(d.shift for d in ds),
            statistics.median(d.median_z for d in ds),
        )
        for signal, ds in sorted(by_signal.items())
    ]


__all__ = [
    "CLUSTER_KEY",
    "DETECTOR",
    "MACHINE_SIGNALS",
    "Assessment",
    "ClusterWatch",
    "Deviation",
    "MachineConfig",
    "MachineFinding",
    "MachineWatch",
    "PodWatch",
]
