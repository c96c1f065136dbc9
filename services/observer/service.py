"""The Observer process: read SWARM_METRICS and SWARM_LOGS, report anomalies to the Hive.

Reading: two ordered, ephemeral JetStream readers (one per stream), started after the position
of the last checkpoint. This runs on plain JetStream, not on faust: the faust-over-JetStream
kernel (swarm/kernel/streaming) was not available when this was written.

Exactly once: state is checkpointed to the KV bucket `swarm-observer`, one key per agent and per
deployment, each holding the last sequence of each stream it applied, and then the read
position. After a crash (even between two keys) the readers restart from the saved position and
every agent skips the messages its own checkpoint already holds, so no window is lost or counted
twice. Findings are sent before the checkpoint that records them, with an id derived from agent,
window and kind: one re-sent after a crash is dropped by JetStream as a duplicate. Behaviour
vectors are written idempotently (unique per agent and window).

Checkpoints are pickles of the detector state (river's trees have no other serialisation); the
bucket is written and read by the Observer alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import pickle
import signal
import time
from dataclasses import asdict, dataclass

import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from schemas import command, names
from services.observer.analysis import AgentState, DeploymentState, Observation, Observatory
from services.observer.behaviour import BehaviourRow, BehaviourStore
from services.observer.config import ObserverSettings
from swarm.kernel.eventlog import AppendRequest, Delivery, EventLog, EventLogError, Reader
from swarm.kernel.settings import Settings

log = structlog.get_logger(__name__)

SOURCE = "observer"
IDENTITY = "service:observer"
#: Bumped when the pickled state changes shape; older checkpoints are then ignored.
CHECKPOINT_VERSION = 1


class Status(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _GapError(Exception):
    """A message of an ordered reader went missing; read again from the applied position."""


@dataclass(slots=True)
class Position:
    metrics_seq: int = 0
    logs_seq: int = 0


class Observer:
    def __init__(self, settings: Settings, config: ObserverSettings | None = None) -> None:
        self.settings = settings
        self.config = config or ObserverSettings()
        self.core = Observatory(self.config.detector(), self.config.window_s)
        self.position = Position()
        self.status = Status.NEW
        #: Set once the readers are open (after the checkpoint was loaded).
        self.live = asyncio.Event()
        self.reports_sent = 0
        self.duplicates = 0
        self._pending: list[AppendRequest] = []
        self._rows: list[BehaviourRow] = []
        self._store: BehaviourStore | None = None
        self._checkpointed = time.monotonic()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Stop reading; safe before start and twice. The last state is checkpointed."""
        self._stop.set()

    async def run(self) -> None:
        if self.settings.nats_url is None:
            raise SystemExit("SWARM_NATS_URL is not set")
        if self._stop.is_set():
            self.status = Status.STOPPED
            return
        self.status = Status.RUNNING
        try:
            eventlog = await EventLog.connect(self.settings.nats_url, self.settings, name=SOURCE)
        except BaseException:
            self.status = Status.STOPPED
            raise
        if self.config.store_behaviour and self.settings.database_url:
            self._store = BehaviourStore(self.settings.database_url)
        try:
            kv = await _bucket(eventlog.js)
            await self._load(kv)
            log.info("observer started", agents=len(self.core.agents), **asdict(self.position))
            while not self._stop.is_set():
                try:
                    await self._follow(eventlog, kv)
                except (_GapError, EventLogError, nats.errors.Error, TimeoutError, OSError) as exc:
                    log.warning("feed interrupted; reading again", error=str(exc) or repr(exc))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), 0.5)
            with contextlib.suppress(EventLogError, nats.errors.Error, TimeoutError, OSError):
                await self._flush(eventlog, kv, force=True)
        finally:
            self.status = Status.STOPPING
            await eventlog.close()
            if self._store is not None:
                self._store.close()
            self.status = Status.STOPPED
            log.info("observer stopped", reports=self.reports_sent, **asdict(self.position))

    # -- reading ----------------------------------------------------------------------------------

    async def _follow(self, eventlog: EventLog, kv: KeyValue) -> None:
        batch = self.config.fetch_batch
        metrics = await eventlog.reader(
            names.STREAM_METRICS,
            start_seq=self.position.metrics_seq + 1,
            subjects=(names.OBSERVER_METRICS,),
            batch=batch,
        )
        logs = await eventlog.reader(
            names.STREAM_LOGS, start_seq=self.position.logs_seq + 1, batch=batch
        )
        expected = {metrics.name: 1, logs.name: 1}
        self.live.set()
        try:
            while not self._stop.is_set():
                await self._flush(eventlog, kv)
                # Logs first: a window closes on a metrics sample, and its log lines should be
                # in by then.
                for d in await _fetch(logs, batch, self.config.idle_s / 2, expected):
                    self.core.apply_log(d.stream_seq, d.data)
                    self.position.logs_seq = d.stream_seq
                for d in await _fetch(metrics, batch, self.config.idle_s, expected):
                    observations = self.core.apply_metrics(
                        d.stream_seq, d.timestamp.timestamp(), d.data
                    )
                    self.position.metrics_seq = d.stream_seq
                    self._collect(observations)
        finally:
            for reader in (metrics, logs):
                with contextlib.suppress(nats.errors.Error, OSError):
                    await reader.close()

    def _collect(self, observations: list[Observation]) -> None:
        for o in observations:
            w = o.window
            if self._store is not None and w.calls:
                self._rows.append(
                    BehaviourRow(w.agent_id, w.namespace, w.name, w.end, o.vector, w.signals())
                )
            if o.finding is None:
                continue
            f = o.finding
            log.info(
                "anomaly",
                agent_id=f.agent_id,
                kind=f.kind,
                score=round(f.score, 3),
                threshold=round(f.threshold, 3),
                signals=[s.signal for s in f.evidence],
            )
            self._pending.append(
                AppendRequest.of(command(f.report(), source=SOURCE, identity=IDENTITY, id=f.id))
            )

    # -- effects and checkpoints ------------------------------------------------------------------

    async def _flush(self, eventlog: EventLog, kv: KeyValue, *, force: bool = False) -> None:
        """Send findings, store vectors, then checkpoint (in that order: a checkpoint never
        covers an effect that was not made)."""
        if self._pending:
            appended = await eventlog.append_batch(self._pending)
            self.reports_sent += len(appended)
            self.duplicates += sum(a.duplicate for a in appended)
            self._pending = []
        if self._rows and self._store is not None:
            rows, self._rows = self._rows, []
            try:
                await asyncio.to_thread(self._store.store, rows)
            except Exception as exc:  # lossy by design: a vector is a view, never the record
                log.warning("behaviour vectors not stored", count=len(rows), error=str(exc))
        if force or time.monotonic() - self._checkpointed >= self.config.checkpoint_s:
            await self._checkpoint(kv)

    async def _checkpoint(self, kv: KeyValue) -> None:
        core = self.core
        for agent_id in sorted(core.dirty_agents):
            await kv.put(names.observer_agent_key(agent_id), _dump(core.agents[agent_id]))
        for namespace in sorted(core.dirty_deployments):
            await kv.put(
                names.observer_deployment_key(namespace), _dump(core.deployments[namespace])
            )
        core.dirty_agents.clear()
        core.dirty_deployments.clear()
        await kv.put(
            names.OBSERVER_POSITION_KEY,
            json.dumps({"v": CHECKPOINT_VERSION, **asdict(self.position)}).encode(),
        )
        self._checkpointed = time.monotonic()

    async def _load(self, kv: KeyValue) -> None:
        try:
            keys = await kv.keys()
        except NoKeysError:
            return
        for key in keys:
            entry = await kv.get(key)
            if entry.value is None:
                continue
            if key == names.OBSERVER_POSITION_KEY:
                doc = json.loads(entry.value)
                if doc.get("v") == CHECKPOINT_VERSION:
                    self.position = Position(int(doc["metrics_seq"]), int(doc["logs_seq"]))
                continue
            state = _load(entry.value)
            if isinstance(state, AgentState):
                if state.aggregator.window_s != self.config.window_s:
                    # Windows of another length cannot continue; this agent starts afresh.
                    log.warning("window length changed; agent state dropped", key=key)
                    continue
                state.analysis.reconfigure(self.core.config)
                self.core.agents[state.aggregator.agent_id] = state
            elif isinstance(state, DeploymentState) and key.startswith("deployment."):
                self.core.deployments[key.removeprefix("deployment.")] = state


async def _fetch(
    reader: Reader, batch: int, timeout: float, expected: dict[str, int]
) -> list[Delivery]:
    deliveries = await reader.fetch(batch, timeout=timeout)
    for d in deliveries:
        # An ack-less ordered reader numbers deliveries 1, 2, 3...: a hole is a lost message.
        if d.consumer_seq != expected[reader.name]:
            raise _GapError(
                f"{reader.stream}: expected {expected[reader.name]}, got {d.consumer_seq}"
            )
        expected[reader.name] += 1
    return deliveries


def _dump(state: AgentState | DeploymentState) -> bytes:
    return pickle.dumps((CHECKPOINT_VERSION, state), protocol=pickle.HIGHEST_PROTOCOL)


def _load(data: bytes) -> AgentState | DeploymentState | None:
    try:
        version, state = pickle.loads(data)  # the bucket is written by the Observer alone
    except Exception as exc:
        log.warning("unreadable checkpoint ignored", error=str(exc))
        return None
    if version != CHECKPOINT_VERSION or not isinstance(state, (AgentState, DeploymentState)):
        return None
    return state


async def _bucket(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(names.OBSERVER_BUCKET)
    except BucketNotFoundError:
        # Creating an existing bucket with the same config is accepted, so restarts agree.
        return await js.create_key_value(bucket=names.OBSERVER_BUCKET, history=1)


async def main() -> None:
    observer = Observer(Settings(), ObserverSettings())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, observer.stop)
    await observer.run()


__all__ = ["IDENTITY", "SOURCE", "Observer", "Status", "main"]
