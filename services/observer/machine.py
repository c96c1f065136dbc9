"""Machine-wide causes: many agents of one pod, or of several pods, deviating together.

When a machine is starved of CPU (a noisy neighbour, a load test beside the stack) or NATS is
slow, every agent on it answers slower at once. Each agent's own detectors see a latency spike;
reporting N agent findings would blame N agents for their machine, and the Hive's healing would
stop them. A pod's metrics message closes the windows of all the agents on it at once, so the
core hands those observations here (`MachineWatch.assess`), which

- finds the signals on which many of them deviate the same way: at least `min_agents`, and
  `share` of those with calls and a warm baseline, each at least `deviation_z` robust z-scores
  above its own baseline (a mild deviation, well below what makes an agent finding), counting
  with the window's agents those that had calls only in the window before (`recent_windows`:
  a starved machine answers few calls, so each window sees few of its agents);
- also counts a pod as deviating when at least `min_agents` and `lasting_share` of its agents
  deviate in two windows in a row: on a machine loaded all along (its loop-lag baseline has
  learnt the load), a CPU hog hits a few of its agents at a time, and it is rare for that many
  agents to go wrong on their own in the same two windows;
- also counts a pod as deviating when its own event loop was starved (the loop lag its messages
  report, summed over the window, `deviation_z` above the pod's usual) and at least
  `min_agents` of its agents deviate, whatever their share: a starved process slows only the
  calls that meet a stall, and with few calls in flight that is a few agents at a time;
- reports one finding about the pod, or about the cluster when pods deviating in the same window
  are at least `cluster_min_pods` and `cluster_share` of the pods active lately; and
- withholds the agent findings their machine explains, while its incident is open: a finding
  whose other evidence could not make it critical (a backlog, a little memory: a starved machine
  serves fewer calls, so messages wait longer), and whose evidence on machine signals is no
  worse than its machine's (in any window of the incident so far: a starved machine hits its
  agents by turns). That is: at most `tolerance` times the machine's median ratio, or
  the ratio that `min_agents` of the pod's agents reached in the window (a starved machine slows
  its agents unevenly: a call that meets a stall or a descheduled thread takes many times longer
  than one that does not, so an agent is compared with the worst few of its peers too), or
  divided by the machine's ratio no longer evidence; or its calls were slower, in all, by no more
  than `stall_tolerance` times the time its pod's loop was reported late (in a window where the
  loop was starved, or any window of an open incident). An agent much slower
  than every peer and than the stalls, or that also fails or burns more fuel, is still reported.

Timing. A slowdown is often seen on a few agents one window before it is seen on the machine
(its first window is partly before it; busy loops take a moment to start), so a finding whose
evidence is only machine signals, in a window with other agents deviating or a starved loop and
no incident open yet, is held (`PodWatch.held`): each later message of the pod that closes
windows judges it again, withholds it if an incident is open by then, holds it again while the
pod is still suspect (its loop starved, or two other agents deviating) for up to
`hold_windows` windows after its own, or releases it (`Assessment.released`): a machine whose
agents are hit by turns can take a few windows to show. Findings with fuel (a cost blowup, a
loop) or other critical evidence are never held, nor is a finding alone on its pod, nor one on a
latency that has been drifting for more than `drift_seen_windows` windows: its rise began before
the window the hold would wait for, and a machine incident in between would have reset its sum
(`slowed`), so holding it would only delay it. A finding on machine signals only that is
reported while its machine's incident is open (an outlier) is a warning at most: the machine
explains part of it. An incident lasts while at least `min_agents` agents deviate or the pod's
loop is starved, and ends after `quiet_windows` windows of neither: a sustained slowdown whose
agents are hit by turns stays one incident. One that opens again within `rejoin_windows` windows
of its end is the same incident going on (a CPU hog lets the loop breathe now and then), not a
new finding; so for the cluster's. While it lasts (up to `max_freeze_windows`), its
agents' latency baselines and the pod's loop-lag baseline do not learn (`slowed`), so the
slowdown is not taken for their normal.

Signals: latency and error rate per call, the ones a machine changes for every agent alike; not
fuel (a machine cannot make a call burn more), not memory or logs. Only upward deviations.

State is JSON (`PodWatch`, `ClusterWatch`), kept per pod and for the cluster in the Observer's
`machines` table; like the rest of the core it depends only on the order of the metrics stream,
so a replay makes the same decisions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from schemas.machine import AffectedAgent, MachineDeviation, ReportPodAnomaly
from services.observer.detectors import RobustZ, SignalScore
from services.observer.finding import Finding
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
#: The loop-lag baseline's signal name (`detectors.ABSOLUTE_FLOORS`).
STALL = "loop_lag"


@dataclass(frozen=True, slots=True)
class MachineConfig:
    min_agents: int = 5
    share: float = 0.5
    deviation_z: float = 3.0
    #: An agent at most this many times worse than its machine is explained by it (against
    #: the machine's median ratio, or the ratio `min_agents` of its agents reached).
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
    #: An agent is explained by its machine's uneven slowdown when at least this many agents of
    #: its window (itself included) were within `tolerance` of it.
    peers: int = 3
    #: While its pod is starved, an agent whose calls were slower on average by at most this many
    #: times the worst loop lateness its pod reported over the window is explained by it.
    stall_tolerance: float = 1.0
    #: Windows of loop lag a pod's baseline keeps, and needs before the pod can count as starved.
    stall_windows: int = 120
    stall_warmup: int = 10
    #: Windows whose agents are counted together to see a machine-wide deviation (`_recent`):
    #: 2 counts this window's agents and those with calls only in the one before; 1 counts
    #: this window's alone. Only the one window before is kept, so more counts as 2.
    recent_windows: int = 2
    #: A finding on a latency whose drift sum has risen for more windows than this is not
    #: held (Timing): one window for the machine to show, one for the machine's first window.
    drift_seen_windows: int = 2
    #: A held finding is judged again at each assessment while its pod stays suspect (its loop
    #: starved, or two agents deviating other than those held: agents hit by turns), for up
    #: to this many windows after its own; then, or once the pod is calm, it is released
    #: (Timing). A few agents slowed together on their own are reported a window late.
    hold_windows: int = 3
    #: A pod whose agents deviate in two windows in a row, at least `min_agents` and this share
    #: of them in each, is deviating (a machine hitting its agents by turns).
    lasting_share: float = 0.15
    #: An incident that opens again within this many windows after its last one closed (of
    #: the same pod, or of the cluster) is the same one going on: no new finding. A CPU hog
    #: lets a pod's loop breathe now and then; beside one, a pod's incident closed after
    #: `quiet_windows` calm windows and opened again 3-6 s later, twice in 15 s (1 s windows).
    rejoin_windows: int = 10


@dataclass(frozen=True, slots=True)
class Deviation:
    """How one signal of a machine's agents moved in one window."""

    signal: str
    #: Agents at least `deviation_z` above their baselines, of those observed.
    deviating: int
    observed: int
    #: Median value / baseline among the deviating agents (1 when none).
    ratio: float
    #: Median value - baseline among them.
    shift: float
    median_z: float
    #: What `MachineConfig.peers` of the observed agents reached: the ratio (latency) or the
    #: shift (error rate) of the `peers`-th worst.
    peak: float = 0.0

    def to_json(self) -> list[Any]:
        return [
            self.signal,
            self.deviating,
            self.observed,
            self.ratio,
            self.shift,
            self.median_z,
            self.peak,
        ]

    @classmethod
    def from_json(cls, doc: list[Any]) -> Deviation:
        ratio, shift = float(doc[3]), float(doc[4])
        # Older state has no peak: the median stands for it.
        peak = float(doc[6]) if len(doc) > 6 else (shift if doc[0] == "error_rate" else ratio)
        return cls(doc[0], int(doc[1]), int(doc[2]), ratio, shift, float(doc[5]), peak)

    def explains(self, score: SignalScore, evidence_z: float, tolerance: float) -> bool:
        """Whether the machine accounts for this agent's deviation on the signal."""
        if self.signal == "error_rate":
            worst = max(self.shift, self.peak)
            if score.value <= tolerance * max(score.baseline + worst, 0.0):
                return True
            adjusted = score.value - self.shift
        else:
            worst = max(self.ratio, self.peak)
            if score.baseline > 0 and score.value <= tolerance * worst * score.baseline:
                return True
            adjusted = score.value / self.ratio if self.ratio > 0 else score.value
        return score.z_of(adjusted) < evidence_z

    def within_peak(self, score: SignalScore, tolerance: float) -> bool:
        """Whether at least `peers` agents of the window were within `tolerance` of it."""
        if self.signal == "error_rate":
            return score.value <= tolerance * max(score.baseline + self.peak, 0.0)
        return score.baseline > 0 and score.value <= tolerance * self.peak * score.baseline


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
    #: The worst loop lag the pod reported over the window (ms), when it counted as starved.
    stall_ms: float = 0.0
    #: The share of agents a slowdown must reach to be critical (`MachineConfig.share`).
    share: float = 0.5

    @property
    def kind(self) -> str:
        return MACHINE_SIGNALS[self.deviations[0].signal]

    @property
    def severity(self) -> str:
        """Critical when most agents are `critical_ratio` times slower (a stall that hit a
        few of them hard is a warning)."""
        slow = [
            d
            for d in self.deviations
            if d.signal == "latency" and d.deviating >= self.share * d.observed
        ]
        return "critical" if slow and slow[0].ratio >= self.critical_ratio else "warning"

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
        if self.stall_ms:
            parts.append(f"its event loop up to {self.stall_ms:.0f} ms late")
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


@dataclass(frozen=True, slots=True)
class Held:
    """An agent finding held back until a later assessment of its pod (see the module's Timing)."""

    finding: Finding
    #: The agent's incident state before the finding's window, to put back if it is withheld.
    incident_before: dict[str, Any] | None
    #: Its own window's peers or the pod's stalls already account for it: withheld if an
    #: incident is open when it is judged again.
    local: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "finding": self.finding.to_json(),
            "incident_before": self.incident_before,
            "local": self.local,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Held:
        return cls(Finding.from_json(doc["finding"]), doc["incident_before"], bool(doc["local"]))


def _stall_baseline(config: MachineConfig) -> RobustZ:
    return RobustZ(STALL, size=config.stall_windows, relative_floor=0.5)


@dataclass(slots=True)
class PodWatch:
    """One pod's machine-wide incident: open while its agents deviate together (or its loop is
    starved), the deviations that explain their findings while it is, the pod's loop lag, and
    the findings held until a later assessment."""

    incident: HoldDown
    deviations: list[Deviation] = field(default_factory=list)
    #: The last metrics sequence of this pod applied (a replay skips what is at or below).
    metrics_seq: int = 0
    #: Start of the first window of the open incident.
    since: float = 0.0
    #: Loop lag reported per window (window start as `%.3f` -> the worst lateness its messages
    #: reported, ms), for the last few windows.
    lags: dict[str, float] = field(default_factory=dict)
    #: The pod's usual loop lag per window (learnt outside incidents); None until first used.
    stall: RobustZ | None = None
    #: Start of the last window whose loop lag was learnt.
    learnt: float = 0.0
    held: list[Held] = field(default_factory=list)
    #: The last window assessed: its start, and its agents' scores on the machine signals
    #: (agent id -> signal -> score), to count with the next window's (`recent_windows`).
    last_start: float = 0.0
    last_scores: dict[str, dict[str, SignalScore]] = field(default_factory=dict)
    #: End of the last window in which at least `min_agents` and `lasting_share` of its agents
    #: deviated.
    lasting_end: float = 0.0
    #: In the last window assessed (`last_start`): the agents at least `deviation_z` above
    #: their baselines on a machine signal, and whether the pod's loop was starved.
    last_deviating: list[str] = field(default_factory=list)
    last_starved: bool = False
    #: End of the window in which the last incident closed (0: none has).
    closed_end: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "incident": self.incident.to_json(),
            "deviations": _deviations_json(self.deviations),
            "metrics_seq": self.metrics_seq,
            "since": self.since,
            "lags": dict(self.lags),
            "stall": None if self.stall is None else self.stall.to_json(),
            "learnt": self.learnt,
            "held": [h.to_json() for h in self.held],
            "last_start": self.last_start,
            "last_scores": {
                agent: [score.to_json() for score in scores.values()]
                for agent, scores in self.last_scores.items()
            },
            "lasting_end": self.lasting_end,
            "last_deviating": list(self.last_deviating),
            "last_starved": self.last_starved,
            "closed_end": self.closed_end,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PodWatch:
        stall = doc.get("stall")
        return cls(
            HoldDown.from_json(doc["incident"]),
            _deviations(doc["deviations"]),
            int(doc["metrics_seq"]),
            float(doc.get("since", 0.0)),
            {w: float(v) for w, v in doc.get("lags", {}).items()},
            None if stall is None else RobustZ.from_json(stall),
            float(doc.get("learnt", 0.0)),
            [Held.from_json(h) for h in doc.get("held", [])],
            float(doc.get("last_start", 0.0)),
            {
                agent: {score[0]: SignalScore.from_json(score) for score in scores}
                for agent, scores in doc.get("last_scores", {}).items()
            },
            float(doc.get("lasting_end", 0.0)),
            [str(a) for a in doc.get("last_deviating", [])],
            bool(doc.get("last_starved", False)),
            float(doc.get("closed_end", 0.0)),
        )

    def stall_since(self, start: float) -> float:
        """The worst loop lag reported from the window starting at `start` until now (ms)."""
        return max((v for w, v in self.lags.items() if float(w) >= start - 1e-9), default=0.0)


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


@dataclass(slots=True)
class Assessment:
    """What one pod message's closed windows showed about their machine."""

    #: Observations whose finding the machine explains (to be withheld).
    withheld: list[Observation] = field(default_factory=list)
    #: Observations whose finding is held until a later assessment of the pod.
    held: list[Observation] = field(default_factory=list)
    #: Observations whose finding its machine's open incident does not explain, reported now
    #: as a warning at most (`Finding.machine_incident`).
    outliers: list[Observation] = field(default_factory=list)
    findings: list[MachineFinding] = field(default_factory=list)
    #: Findings held at an earlier assessment: explained by the machine now (withheld), or
    #: not (released: to be reported now).
    explained: list[Held] = field(default_factory=list)
    released: list[Held] = field(default_factory=list)


@dataclass(slots=True)
class MachineWatch:
    config: MachineConfig = field(default_factory=MachineConfig)
    evidence_z: float = 4.0
    #: The windows' length (s): the pod's loop lag is summed per window.
    window_s: float = 10.0
    pods: dict[str, PodWatch] = field(default_factory=dict)
    cluster: ClusterWatch = field(default_factory=ClusterWatch)
    #: Keys (pod ids, `CLUSTER_KEY`) changed since the service last saved them.
    dirty: set[str] = field(default_factory=set)

    def pod(self, pod_id: str) -> PodWatch:
        watch = self.pods.get(pod_id)
        if watch is None:
            watch = self.pods[pod_id] = PodWatch(HoldDown(self.config.quiet_windows))
        return watch

    def note(self, pod_id: str, seq: int, time: float, loop_lag_ms: float) -> bool:
        """Take one metrics message of pod `pod_id` in (call for every message, before its
        windows are assessed); False when the pod has applied it already (a replay)."""
        watch = self.pod(pod_id)
        if watch.metrics_seq >= seq:
            return False
        watch.metrics_seq = seq
        start = math.floor(time / self.window_s) * self.window_s
        key = f"{start:.3f}"
        watch.lags[key] = max(watch.lags.get(key, 0.0), loop_lag_ms)
        # Windows close within a few of their end; older lags are judged already.
        horizon = start - 4 * self.window_s
        for old in [w for w in watch.lags if float(w) < horizon - 1e-9]:
            del watch.lags[old]
        self.dirty.add(pod_id)
        return True

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
        """Judge the windows a message of pod `pod_id` closed (call once per message, after
        `note`), then the findings held at the pod's previous assessment."""
        out = Assessment()
        mine = [o for o in observations if pod_id and pod_id in o.window.pods]
        if not mine:
            return out
        pod = self.pod(pod_id)
        pending, pod.held = pod.held, []
        by_start: dict[float, list[Observation]] = {}
        for o in mine:
            by_start.setdefault(o.window.start, []).append(o)
        for start in sorted(by_start):
            self._window(pod_id, by_start[start], out)
        # The held findings, a window later or more: withheld if an incident is open now,
        # held again while the pod is still suspect and they are young, released otherwise.
        last = max(by_start)
        seconds = by_start[last][0].window.seconds
        end = last + seconds
        explaining = self._explaining(pod, end, seconds)
        open_ = bool(explaining) or pod.incident.active
        suspect = self._suspect(pod, last, {h.finding.agent_id for h in pending})
        young = end - self.config.hold_windows * seconds
        for held in pending:
            if open_ and (held.local or self._explained(held.finding, explaining)):
                out.explained.append(held)
            elif suspect and held.finding.window_end > young + 1e-6:
                pod.held.append(held)
            else:
                out.released.append(held)
        if out.explained and out.findings:
            first = out.findings[0]
            out.findings[0] = dataclasses.replace(
                first, withheld=first.withheld + len(out.explained)
            )
        self.dirty.update((pod_id, CLUSTER_KEY))
        return out

    def _explaining(self, pod: PodWatch, end: float, seconds: float) -> dict[str, Deviation]:
        """The deviations of the open incidents (the cluster's, then the pod's) by signal."""
        cluster = self.cluster
        explaining: dict[str, Deviation] = {}
        if cluster.active(end, seconds, self.config.quiet_windows):
            explaining.update((d.signal, d) for d in cluster.deviations)
        if pod.incident.active:
            explaining.update((d.signal, d) for d in pod.deviations)
        return explaining

    def _starved(self, pod: PodWatch, stall_ms: float) -> bool:
        baseline = pod.stall
        if baseline is None or not baseline.ready(self.config.stall_warmup):
            return False
        return baseline.score(stall_ms).z >= self.config.deviation_z

    def _window(self, pod_id: str, group: list[Observation], out: Assessment) -> None:
        config = self.config
        start, end = group[0].window.start, group[0].window.end
        seconds = end - start
        pod = self.pod(pod_id)
        cluster = self.cluster
        stall_ms = pod.stall_since(start)
        starved = self._starved(pod, stall_ms)
        measured = self._measure(self._recent(pod, group, start, seconds))
        strict = [
            d
            for d in measured.values()
            if d.deviating >= config.min_agents and d.deviating >= config.share * d.observed
        ]
        broad = [d for d in measured.values() if d.deviating >= config.min_agents]
        lasting = [d for d in broad if d.deviating >= config.lasting_share * d.observed]
        suspects = [o for o in group if o.finding is not None and _machine_only(o.finding)]
        local = {
            id(o): self._local(o.finding, measured, stall_ms if starved else None)
            for o in suspects
            if o.finding is not None
        }
        was_active = pod.incident.active
        # Opening needs most agents deviating, or `lasting_share` of them in two windows in a
        # row (a loaded machine whose loop-lag baseline learnt the load, hitting its agents by
        # turns), or the pod's loop starved and some of them deviating (or slowed by no more
        # than its stalls); an open incident lasts while some deviate or the loop is starved.
        again = bool(lasting) and abs(pod.lasting_end - start) < 1e-6
        if was_active:
            flagged = bool(broad) or starved
        else:
            flagged = bool(strict) or again or (starved and (bool(broad) or any(local.values())))
        if lasting:
            pod.lasting_end = end
        pod.last_starved = starved
        pod.last_deviating = sorted(
            o.window.agent_id
            for o in group
            if any(o.scores[s].z >= config.deviation_z for s in MACHINE_SIGNALS if s in o.eligible)
        )
        deviations = strict or ((lasting if again else broad) if flagged else [])
        if flagged and not deviations:
            if "latency" in measured:
                deviations = [measured["latency"]]  # opened by its loop's stalls
            elif not was_active:
                # Too few agents with calls to judge the machine by (fewer than `min_agents`):
                # a starved loop alone opens no incident, and a finding could show nothing.
                flagged = False

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
        # The cluster's incident closed `quiet_windows` after the last window it deviated in.
        cluster_rejoins = (
            cluster.flagged_end > 0
            and start
            < cluster.flagged_end + (config.quiet_windows + config.rejoin_windows) * seconds - 1e-6
        )
        if cluster_flag:
            if not cluster_was_active and not cluster_rejoins:
                cluster.since = start
            cluster.flagged_end = max(cluster.flagged_end, end)
            cluster.deviations = _merge(_deviations(d) for d in tally.values())
        cluster_active = cluster.active(end, seconds, config.quiet_windows)
        self._prune(end, seconds)

        # What explains this pod's agents: the open incidents' deviations and this window's.
        explaining = self._explaining(pod, end, seconds)
        for d in deviations:
            explaining[d.signal] = _wider(explaining.get(d.signal), d)
        incident = was_active or flagged or cluster_active
        withheld_before = len(out.withheld)
        for o in suspects:
            finding = o.finding
            assert finding is not None
            if incident:
                # In an incident's window the loop's lateness accounts for calls as slow as it,
                # starved or not: the machine is known to be the cause, and a loop-lag baseline
                # that learnt a loaded machine may not call a 2.4 s stall starved (beside a CPU
                # hog, four agents whose calls met one stall were each reported as outliers).
                if (
                    local[id(o)]
                    or self._explained(finding, explaining)
                    or self._local(finding, measured, stall_ms)
                ):
                    out.withheld.append(o)
                else:
                    # An outlier of its machine's incident, reported now; part of its slowness
                    # is still the machine's, so it cannot be critical (a starved machine slows
                    # a few agents many times more than the rest: measured beside a CPU hog).
                    out.outliers.append(o)
            elif (local[id(o)] or starved or self._accompanied(finding, measured)) and not (
                finding.drift_windows > config.drift_seen_windows
            ):
                out.held.append(o)
                pod.held.append(Held(finding, o.incident_before, local[id(o)]))

        opening = flagged and not was_active
        young = was_active and end - pod.since < config.max_freeze_windows * seconds
        if not opening and not young and start > pod.learnt:
            # The pod's loop lag outside incidents (or in one that has lasted for long) is its
            # normal; winsorised like any baseline.
            if pod.stall is None:
                pod.stall = _stall_baseline(config)
            pod.stall.learn(stall_ms, pod.stall.score(stall_ms) if pod.stall.values else None)
            pod.learnt = start
        new_incident = pod.incident.step(flagged)
        rejoin_until = pod.closed_end + config.rejoin_windows * seconds
        if new_incident and pod.closed_end and start < rejoin_until - 1e-6:
            new_incident = False  # the last one going on (`rejoin_windows`): it keeps `since`
        elif new_incident:
            pod.since = start
        if was_active and not pod.incident.active:
            pod.closed_end = end
        if deviations:
            # While the incident lasts, what it did to its agents in any of its windows can
            # explain a finding: a starved machine hits its agents by turns and unevenly, so a
            # window that saw few of them does not show how hard it hits.
            earlier = {d.signal: d for d in pod.deviations} if was_active else {}
            pod.deviations = [_wider(earlier.get(d.signal), d) for d in deviations]
        elif not pod.incident.active:
            pod.deviations = []

        scope = None
        if cluster_flag and not cluster_was_active and not cluster_rejoins:
            scope = "cluster"
        elif new_incident and not cluster_active:
            scope = "pod"
        if scope is None:
            return
        shown = cluster.deviations if scope == "cluster" else deviations
        out.findings.append(
            MachineFinding(
                scope=scope,
                pod_id=pod_id,
                pods=tuple(deviating_pods) if scope == "cluster" else (pod_id,),
                window_start=start,
                window_end=end,
                deviations=tuple(shown),
                agents=self._affected(group, deviations or shown),
                withheld=len(out.withheld) - withheld_before,
                deviation_z=config.deviation_z,
                critical_ratio=config.critical_ratio,
                stall_ms=stall_ms if starved else 0.0,
                share=config.share,
            )
        )

    def _recent(
        self, pod: PodWatch, group: list[Observation], start: float, seconds: float
    ) -> dict[str, dict[str, SignalScore]]:
        """The machine signals' scores of the window's agents with calls and a warm baseline
        (agent id -> signal -> score), and of the agents that had calls in the window just
        before it and none in this one. A starved machine answers few calls: with an agent's
        calls far apart, the agents hit in one window are a few, those of two windows enough
        to see the machine (seen beside busy loops: 12 of 50 agents with calls in a window,
        and 4 agents slowed 15x in the window before the incident opened, reported as
        agent findings). The window's own scores are kept for the next."""
        scores = {
            o.window.agent_id: {s: o.scores[s] for s in MACHINE_SIGNALS if s in o.eligible}
            for o in group
        }
        scores = {agent: mine for agent, mine in scores.items() if mine}
        recent = dict(scores)
        if self.config.recent_windows > 1 and abs(pod.last_start - (start - seconds)) < 1e-6:
            for agent, earlier in pod.last_scores.items():
                recent.setdefault(agent, earlier)
        pod.last_start, pod.last_scores = start, scores
        return recent

    def _measure(self, recent: dict[str, dict[str, SignalScore]]) -> dict[str, Deviation]:
        """Each machine signal over the recent agents (`_recent`) (signals observed on fewer
        than `min_agents` agents are left out)."""
        config = self.config
        out = {}
        for signal in MACHINE_SIGNALS:
            observed = [mine[signal] for mine in recent.values() if signal in mine]
            if len(observed) < config.min_agents:
                continue
            up = [s for s in observed if s.z >= config.deviation_z]
            if signal == "error_rate":
                spread = sorted((s.value - s.baseline for s in observed), reverse=True)
            else:
                spread = sorted(
                    (s.value / s.baseline for s in observed if s.baseline > 0), reverse=True
                )
            ratios = [s.value / s.baseline for s in up if s.baseline > 0]
            out[signal] = Deviation(
                signal,
                len(up),
                len(observed),
                statistics.median(ratios) if ratios else 1.0,
                statistics.median(s.value - s.baseline for s in up) if up else 0.0,
                statistics.median(s.z for s in up) if up else 0.0,
                spread[config.peers - 1] if len(spread) >= config.peers else 0.0,
            )
        return out

    def _suspect(self, pod: PodWatch, start: float, held: set[str]) -> bool:
        """Whether the pod's window starting at `start` hints at its machine: its loop starved,
        or at least two agents other than `held` deviating (the agents of a finding held do not
        make their own pod suspect: two agents slowed together are theirs, not the machine's)."""
        if abs(pod.last_start - start) > 1e-6:
            return False
        return pod.last_starved or len(set(pod.last_deviating) - held) >= 2

    def _accompanied(self, finding: Finding, measured: dict[str, Deviation]) -> bool:
        """Whether other agents of the window deviate on one of the finding's machine signals
        too (a finding alone on its pod is not the start of a machine-wide incident)."""
        return any(
            e.signal in measured and measured[e.signal].deviating >= 2 for e in finding.evidence
        )

    def _local(
        self, finding: Finding, measured: dict[str, Deviation], stall_ms: float | None
    ) -> bool:
        """Whether the finding's own window accounts for it: on each machine signal, at least
        `peers` agents within `tolerance` of it, or (latency, `stall_ms` given: the pod was
        starved, or its incident is open) calls slower on average by no more than
        `stall_tolerance` times the worst lateness of the pod's loop."""
        for evidence in finding.evidence:
            if evidence.signal not in MACHINE_SIGNALS:
                continue
            peers = measured.get(evidence.signal)
            if peers is not None and peers.within_peak(evidence, self.config.tolerance):
                continue
            stalled = stall_ms is not None and evidence.signal == "latency"
            if stalled and evidence.value - evidence.baseline <= self.config.stall_tolerance * (
                stall_ms or 0.0
            ):
                continue
            return False
        return True

    def _explained(self, finding: Finding, explaining: dict[str, Deviation]) -> bool:
        """Whether the open incidents account for the finding: each machine signal of its
        evidence within what they did to their agents."""
        if not explaining:
            return False
        for evidence in finding.evidence:
            if evidence.signal in MACHINE_SIGNALS:
                deviation = explaining.get(evidence.signal)
                if deviation is None or not deviation.explains(
                    evidence, self.evidence_z, self.config.tolerance
                ):
                    return False
        return True

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


def _machine_only(finding: Finding) -> bool:
    """Whether a machine could account for the finding: it has evidence on a machine signal,
    and no other evidence that could make a finding critical (fuel: a machine cannot make a
    call burn more)."""
    machine = False
    for evidence in finding.evidence:
        if evidence.signal in MACHINE_SIGNALS:
            machine = True
        elif evidence.signal in CRITICAL_SIGNALS:
            return False
    return machine


def _wider(earlier: Deviation | None, now: Deviation) -> Deviation:
    """`now`, reaching as far as `earlier` (of the same signal) did: the larger ratio, shift
    and peak explain more."""
    if earlier is None:
        return now
    return dataclasses.replace(
        now,
        ratio=max(earlier.ratio, now.ratio),
        shift=max(earlier.shift, now.shift),
        peak=max(earlier.peak, now.peak),
    )


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
            statistics.median(d.peak for d in ds),
        )
        for signal, ds in sorted(by_signal.items())
    ]


__all__ = [
    "CLUSTER_KEY",
    "DETECTOR",
    "MACHINE_SIGNALS",
    "STALL",
    "Assessment",
    "ClusterWatch",
    "Deviation",
    "Held",
    "MachineConfig",
    "MachineFinding",
    "MachineWatch",
    "PodWatch",
]
