"""The Observer as a stream-processing app (swarm.kernel.streaming): processors over SWARM_METRICS
and SWARM_LOGS that feed the pure core, with its state in changelog-backed tables.

Tables (JSON values, see `analysis`):

- `windows`: agent id -> the windows in progress and the agent's counts (`AgentState.window_json`),
  written by every message about the agent;
- `detectors`: agent id -> its detectors (`AgentAnalysis.to_json`), written when a window closes;
- `deployments`: namespace -> its centroid (`DeploymentState.to_json`);
- `machines`: pod id -> its machine-wide incident (`machine.PodWatch`), and `*` -> the
  cluster's (`machine.ClusterWatch`), written when a pod's message closes windows.

Windows are the core's own (`features.WindowAggregator`), kept in plain tables, not the module's
windowed tables: a window is closed, and scored, when the agent's first sample of a later window
arrives, which must happen inside the handler (to return the finding), in stream order and the
same on every replay; a window holds counter deltas against each replica's previous sample and
log lines placed by their own timestamps, neither of which is a per-event aggregate of a faust
window. The module's tables give what the windows need: exactly-once state, recovered before
intake.

Handlers return the findings as `anomaly.report` commands (those of the windows a message
closed, and those held back a window by the machine check and released by it), and machine-wide
findings as `pod.report_anomaly` commands. Their ids are the findings' own (`Finding.id`, from
agent, window end and kind; `MachineFinding.id`, from scope, pod, window end and kind), which
are as stable across replays as `event.derived_id` and also across a rebuild of the tables from
the streams, so JetStream drops a repeat (within its duplicate window, SWARM_DUPLICATE_WINDOW).

The handlers must not mutate the tables' values (the module keeps a key's value from before a
batch to roll back to), and decoding the detectors from JSON on every message would dominate the
cost; so the core keeps its live objects between messages, and `TableSync` reloads one from its
table whenever the table holds a value other than the one last written from it (after a handler
failed and was rolled back, or after a restart).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import structlog

from schemas import Envelope, command, names
from services.observer.analysis import AgentState, DeploymentState, Observation, Observatory
from services.observer.behaviour import BehaviourRow
from services.observer.config import ObserverSettings
from services.observer.features import LogSample, ReplicaSample, parse_log, parse_metrics
from services.observer.finding import Finding
from services.observer.machine import CLUSTER_KEY, ClusterWatch, MachineFinding, PodWatch
from swarm.kernel.ids import IdKey
from swarm.kernel.settings import Settings
from swarm.kernel.streaming import StreamApp, StreamEvent, Tables

log = structlog.get_logger(__name__)

SOURCE = "observer"
IDENTITY = "service:observer"

_MISSING: Any = object()
#: What `TableSync` keeps per key: an agent's state or a deployment's.
_Kept = TypeVar("_Kept", AgentState, DeploymentState)


def decode_metrics(body: bytes) -> list[ReplicaSample]:
    """A pod metrics message's samples (their time is set from the event's); raises
    `MalformedSample` with the reason, which dead-letters the message."""
    return parse_metrics(body, 0.0)


def decode_log(body: bytes) -> LogSample:
    return parse_log(body)


class TableSync:
    """Moves the core's state for the keys one message touches between the tables and the core.

    `load` before the core applies the message, `save` after it; `forget` when the handler
    failed (the module rolls the tables back, so the core's objects for those keys are stale).
    """

    def __init__(self, core: Observatory) -> None:
        self.core = core
        #: (table, key) -> the table value the core's object for that key equals.
        self._synced: dict[tuple[str, str], Any] = {}
        #: Machine keys (pod, cluster) loaded for the message in hand.
        self._machine_keys: list[str] = []

    def _fresh(self, table: str, key: str, value: Any) -> bool:
        return self._synced.pop((table, key), _MISSING) is value

    def load(
        self,
        tables: Tables,
        agents: Iterable[str],
        namespaces: Iterable[str],
        pods: Iterable[str] = (),
    ) -> set[str]:
        """Load the agents, namespaces and pods (with a pod, the cluster too); returns the
        namespaces loaded: those given and those of the agents' windows (a closing window
        teaches its own namespace's centroid)."""
        core = self.core
        self._load_machines(tables, pods)
        windows_t = tables[names.OBSERVER_TABLE_WINDOWS]
        detectors_t = tables[names.OBSERVER_TABLE_DETECTORS]
        deployments_t = tables[names.OBSERVER_TABLE_DEPLOYMENTS]
        for agent in agents:
            windows = windows_t.get(agent)
            analysis = detectors_t.get(agent)
            same_windows = self._fresh(names.OBSERVER_TABLE_WINDOWS, agent, windows)
            same_analysis = self._fresh(names.OBSERVER_TABLE_DETECTORS, agent, analysis)
            if same_windows and same_analysis and (windows is None or agent in core.agents):
                continue
            core.agents.pop(agent, None)
            if windows is None:
                continue  # the core starts the agent afresh
            if windows["aggregator"]["window_s"] != core.window_s:
                # Windows of another length cannot continue; the agent starts afresh.
                log.warning("window length changed; agent state dropped", agent_id=agent)
                continue
            core.agents[agent] = AgentState.from_json(windows, analysis, core.config)
        touched = set(namespaces)
        touched.update(core.agents[a].aggregator.namespace for a in agents if a in core.agents)
        for namespace in touched:
            deployment = deployments_t.get(namespace)
            if self._fresh(names.OBSERVER_TABLE_DEPLOYMENTS, namespace, deployment) and (
                deployment is None or namespace in core.deployments
            ):
                continue
            core.deployments.pop(namespace, None)
            if deployment is not None:
                core.deployments[namespace] = DeploymentState.from_json(deployment)
        return touched

    def _load_machines(self, tables: Tables, pods: Iterable[str]) -> None:
        machines_t = tables[names.OBSERVER_TABLE_MACHINES]
        watch = self.core.machines
        keys = list(pods)
        if keys:
            keys.append(CLUSTER_KEY)
        self._machine_keys = keys
        for key in keys:
            doc = machines_t.get(key)
            if self._fresh(names.OBSERVER_TABLE_MACHINES, key, doc):
                continue
            if key == CLUSTER_KEY:
                watch.cluster = ClusterWatch() if doc is None else ClusterWatch.from_json(doc)
            elif doc is None:
                watch.pods.pop(key, None)
            else:
                watch.pods[key] = PodWatch.from_json(doc)

    def save(self, tables: Tables, agents: Iterable[str], namespaces: Iterable[str]) -> None:
        core = self.core
        machines_t = tables[names.OBSERVER_TABLE_MACHINES]
        watch = core.machines
        for key in watch.dirty:
            doc = watch.cluster.to_json() if key == CLUSTER_KEY else watch.pod(key).to_json()
            machines_t[key] = doc
        for key in {*watch.dirty, *self._machine_keys}:
            # Whatever the table holds now is what the core's object equals.
            self._synced[names.OBSERVER_TABLE_MACHINES, key] = machines_t.get(key)
        self._machine_keys = []
        self._save_keyed(
            tables,
            agents,
            core.agents,
            (
                (names.OBSERVER_TABLE_WINDOWS, core.dirty_agents, AgentState.window_json),
                (names.OBSERVER_TABLE_DETECTORS, core.dirty_analyses, _analysis_json),
            ),
        )
        self._save_keyed(
            tables,
            namespaces,
            core.deployments,
            ((names.OBSERVER_TABLE_DEPLOYMENTS, core.dirty_deployments, DeploymentState.to_json),),
        )
        self._clear()

    def _save_keyed(
        self,
        tables: Tables,
        keys: Iterable[str],
        objects: dict[str, _Kept],
        parts: Sequence[tuple[str, set[str], Callable[[_Kept], Any]]],
    ) -> None:
        """Save the core's `objects` of `keys` (agents, deployments) to their tables: each part
        is a table, the keys changed in it, and the object's value there. An object its first
        part's table holds nothing of was created but never changed: nothing to keep."""
        views = [(table, tables[table], dirty, to_json) for table, dirty, to_json in parts]
        first = views[0][1]
        for key in keys:
            kept = objects.get(key)
            if kept is None:
                continue
            for _, view, dirty, to_json in views:
                if key in dirty:
                    view[key] = to_json(kept)
            if key not in first:
                objects.pop(key)
                continue
            for table, view, _, _ in views:
                # Whatever the table holds now is what the core's object equals.
                self._synced[table, key] = view.get(key)

    def forget(
        self, agents: Iterable[str], namespaces: Iterable[str], pods: Iterable[str] = ()
    ) -> None:
        watch = self.core.machines
        for key in [*pods, CLUSTER_KEY] if pods else ():
            if key == CLUSTER_KEY:
                watch.cluster = ClusterWatch()
            else:
                watch.pods.pop(key, None)
            self._synced.pop((names.OBSERVER_TABLE_MACHINES, key), None)
        self._machine_keys = []
        for agent in agents:
            self.core.agents.pop(agent, None)
            self._synced.pop((names.OBSERVER_TABLE_WINDOWS, agent), None)
            self._synced.pop((names.OBSERVER_TABLE_DETECTORS, agent), None)
        for namespace in namespaces:
            self.core.deployments.pop(namespace, None)
            self._synced.pop((names.OBSERVER_TABLE_DEPLOYMENTS, namespace), None)
        self._clear()

    def _clear(self) -> None:
        self.core.machines.dirty.clear()
        self.core.dirty_agents.clear()
        self.core.dirty_analyses.clear()
        self.core.dirty_deployments.clear()


def _analysis_json(state: AgentState) -> dict[str, Any]:
    return state.analysis.to_json()


def report(
    found: Observation | Finding, now: float, max_age: float, ids: IdKey
) -> Envelope[Any] | None:
    """The `anomaly.report` command of a finding (or of an observation's, if it has one), if
    it is recent.

    A finding whose window ended more than `max_age` seconds ago comes from reading old metrics
    again (a first start, or a rebuild after the changelog was deleted): the incident is long
    over, and JetStream's duplicate window may no longer hold the report sent at the time, so
    it is not sent again. This reads the clock, yet replays stay exact: the decision only ever
    turns from "send" to "skip" as time passes, so no finding is sent twice because of it.
    """
    f = found.finding if isinstance(found, Observation) else found
    if f is None:
        return None
    fields = {
        "agent_id": f.agent_id,
        "kind": f.kind,
        "score": round(f.score, 3),
        "threshold": round(f.threshold, 3),
        "signals": [s.signal for s in f.evidence],
    }
    if now - f.window_end > max_age:
        log.info("old anomaly not reported", age_s=round(now - f.window_end), **fields)
        return None
    log.info("anomaly", **fields)
    # Keyed (swarm.kernel.ids): the same finding always gets the same id, which nobody else
    # can predict and answer first.
    return command(f.report(), source=SOURCE, identity=IDENTITY, id=ids.derive("obs", f.id))


def machine_report(
    finding: MachineFinding, now: float, max_age: float, ids: IdKey
) -> Envelope[Any] | None:
    """The `pod.report_anomaly` command of a machine-wide finding, if it is recent (see
    `report`)."""
    fields = {
        "pod_id": finding.pod_id,
        "scope": finding.scope,
        "kind": finding.kind,
        "pods": len(finding.pods),
        "withheld": finding.withheld,
    }
    if now - finding.window_end > max_age:
        log.info(
            "old machine anomaly not reported", age_s=round(now - finding.window_end), **fields
        )
        return None
    log.info("machine anomaly", **fields)
    return command(
        finding.report(), source=SOURCE, identity=IDENTITY, id=ids.derive("obs", finding.id)
    )


def build_app(
    settings: Settings,
    config: ObserverSettings,
    core: Observatory | None = None,
    on_windows: Callable[[list[BehaviourRow]], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> StreamApp:
    """The Observer's StreamApp; `on_windows` gets the behaviour rows of each message's closed
    windows that had calls (called once the handler succeeded; again for a replayed message)."""
    core = core or Observatory(config.detector(), config.window_s, machine_config=config.machine())
    sync = TableSync(core)
    # Never beyond the duplicate window, within which JetStream drops a repeated report.
    max_age = min(config.report_max_age_s, settings.duplicate_window)
    ids = IdKey.of(settings.command_id_secret, "observer")
    app = StreamApp(
        names.OBSERVER_APP,
        settings,
        batch=config.fetch_batch,
        ack_wait=config.ack_wait_s,
        fetch_timeout=config.idle_s,
    )
    app.table(names.OBSERVER_TABLE_WINDOWS)
    app.table(names.OBSERVER_TABLE_DETECTORS)
    app.table(names.OBSERVER_TABLE_DEPLOYMENTS)
    app.table(names.OBSERVER_TABLE_MACHINES)

    @app.processor(
        stream=names.STREAM_METRICS,
        subjects=[names.OBSERVER_METRICS],
        durable=names.OBSERVER_METRICS_PROCESSOR,
        decode=decode_metrics,
    )
    def on_metrics(tables: Tables, event: StreamEvent) -> list[Envelope[Any]]:
        stored = event.timestamp.timestamp()
        samples = [dataclasses.replace(s, time=stored) for s in event.envelope]
        agents = {s.agent_id for s in samples}
        namespaces = {s.namespace for s in samples}
        pods = {s.pod_id for s in samples[:1] if s.pod_id}
        try:
            namespaces = sync.load(tables, agents, namespaces, pods)
            observations = core.apply_samples(event.seq, samples)
            machine = core.machine_findings
            released = core.released
            sync.save(tables, agents, namespaces)
        except BaseException:
            sync.forget(agents, namespaces, pods)
            raise
        now = clock()
        reports = [e for o in observations if (e := report(o, now, max_age, ids)) is not None]
        # Findings of earlier windows the machine check held back and did not explain.
        reports += [e for f in released if (e := report(f, now, max_age, ids)) is not None]
        reports += [e for f in machine if (e := machine_report(f, now, max_age, ids)) is not None]
        if on_windows is not None:
            rows = [
                BehaviourRow(w.agent_id, w.namespace, w.name, w.end, o.vector, w.signals())
                for o in observations
                if (w := o.window).calls
            ]
            if rows:
                on_windows(rows)
        return reports

    @app.processor(
        stream=names.STREAM_LOGS,
        durable=names.OBSERVER_LOGS_PROCESSOR,
        decode=decode_log,
    )
    def on_log(tables: Tables, event: StreamEvent) -> None:
        line: LogSample = event.envelope
        agents = (line.agent_id,)
        namespaces: set[str] = set()
        try:
            namespaces = sync.load(tables, agents, ())
            core.apply_line(event.seq, line)
            sync.save(tables, agents, namespaces)
        except BaseException:
            sync.forget(agents, namespaces)
            raise

    return app


__all__ = [
    "IDENTITY",
    "SOURCE",
    "TableSync",
    "build_app",
    "decode_log",
    "decode_metrics",
    "machine_report",
    "report",
]
