"""The pod process: register with the Hive, keep the lease, run the replicas the log places here.

Like the scheduler, the pod keeps no position: on start it replays SWARM_EVENTS from the first
message into a `PodView` with an ordered ephemeral reader, and the same reader then follows the
log. It does nothing until the view has caught up with the end of the log (a half-rebuilt view
would start replicas that were moved or stopped further down), then reconciles after every batch:
replicas placed here that do not run are started; running ones the log stopped, moved or deleted
are stopped (a deleted agent's at once: messages still queued are refused, not run). Everything
the pod does is reported as a `replica.report` command; only the Hive writes events.

Reports only about what the Hive still has: a report about a replica the log deleted, stopped
or moved off this pod (`PodView.owns`) is dropped here (a debug log and `reports_dropped` in the
pod's metrics), not sent to be refused. A report already in flight when the Hive forgot the
replica is refused (`not_found` / `not_assigned`); the pod folds that refusal from the log, stops
the replica and never reports it again (`reports_refused`).

The lease (runtime/heartbeat.py): heartbeats and answers to the Hive's liveness probe come from
a thread with its own NATS connection, so a busy event loop cannot starve them; a `LoopClock`
on the loop measures how late it is, which the probe answer and the metrics carry.

Agents' calls run on the pod's `WorkerPool` (runtime/workers.py): `workers` threads, of which
one agent's replicas hold at most `agent_workers()` at once, a freed thread going to the waiting
agent that holds the fewest; so one agent (a spinner, a flood) cannot starve its neighbours.
Every replica's kv state is bounded by the pod's `max_state_bytes` / `max_state_keys`.

Shutdown: `stop()` drains (each replica finishes its queued messages and saves a last snapshot)
but reports nothing and does not deregister: the lease runs out and the Hive moves the replicas,
or the pod comes back under the same id first and resumes them. Cancelling `run()` is the
abrupt path (as kill -9): nothing is saved, sandboxes are dropped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
from typing import Any

import structlog

from runtime.components import ComponentCache
from runtime.config import PodSettings, load_pod_settings
from runtime.embeddings import MiniLMEmbedder
from runtime.engine import SandboxEngine
from runtime.heartbeat import Heartbeat, LoopClock
from runtime.host import JSON
from runtime.limits import CallBudget
from runtime.memory import VectorMemory
from runtime.meshguard import MeshGuard
from runtime.modules import ModuleCache
from runtime.net import HttpFetcher
from runtime.podview import HANDLED, Assignment, PodView, quarantine_of
from runtime.replica import ModuleUnavailable, Replica, ReplicaDeps, State, Status
from runtime.snapshots import SnapshotStore
from runtime.workers import WorkerPool
from schemas import Envelope, Payload, command, commands, names
from schemas.specs import Capacity, ModuleRef
from swarm.devstack.principals import Roster
from swarm.kernel import lifecycle
from swarm.kernel.admin import LogAdmin
from swarm.kernel.eventlog import AppendRequest, EventLog, EventLogError, NotFound
from swarm.kernel.follow import follow, wanted_events
from swarm.kernel.lifecycle import Service, run_until_signalled
from swarm.kernel.logs import configure_logging
from swarm.kernel.settings import Settings, load
from swarm.kernel.tasks import cancel_and_wait

log = structlog.get_logger(__name__)


_WANTED = wanted_events(HANDLED)
_REPORT_ATTEMPTS = 3
#: How often the event loop's clock ticks (its lag is measured against it).
_TICK_S = 0.1


class Pod(Service):
    name = "pod"

    def __init__(self, settings: Settings, config: PodSettings | None = None) -> None:
        super().__init__(settings)
        self.config = config or PodSettings()
        self.pod_id = self.config.id
        self.identity = f"pod:{self.pod_id}"
        self.source = f"pod-{self.pod_id}"
        self.view = PodView(self.pod_id)
        #: Set once the view has caught up with the log; nothing is started before.
        self.live = asyncio.Event()
        self.replicas: dict[str, Replica] = {}
        #: Replicas finishing (stopped, moved away or broken and dropped), until their task ends.
        self._retiring: set[Replica] = set()
        #: Metrics rows of replicas that finished since the last publish, sent once more.
        self._final_metrics: list[dict[str, JSON]] = []
        #: Placements of `stopping` replicas this pod reported stopped without running them.
        self._reported_stopped: set[tuple[str, int]] = set()
        self._registered_after = 0
        #: Reports not sent because the log says the Hive no longer has the replica.
        self.reports_dropped = 0
        self.clock = LoopClock(_TICK_S)
        self.heartbeat: Heartbeat | None = None
        self._eventlog: EventLog | None = None
        self._deps: ReplicaDeps | None = None
        #: Checks the sender of every mesh message to this pod's agents (with principals).
        self.guard: MeshGuard | None = None
        if self.config.principals_file is not None:
            # Read now: an unreadable listing fails at start, not at the first message.
            self.guard = MeshGuard(Roster(self.config.principals_file), self.view)

    async def serve(self) -> None:
        """Follow the log until stopped, then drain the replicas (`stop()`)."""
        engine = SandboxEngine()
        workers = WorkerPool(
            self.config.workers, self.config.agent_workers(), name=f"pod-{self.pod_id}"
        )
        eventlog: EventLog | None = None
        memory = self._vector_memory()
        http = HttpFetcher(allow_private=self.config.net_allow_private, threads=self.config.workers)
        tasks: list[asyncio.Task[None]] = []
        heartbeat = self.heartbeat = Heartbeat(
            self.nats_url,
            self.pod_id,
            interval_s=self.config.lease_s / 4,
            lag=self.clock.lag,
            stall_s=self.config.loop_stall_s,
            credentials=self.settings.nats_credentials,
        )
        graceful = False
        try:
            eventlog = self._eventlog = await EventLog.connect(
                self.nats_url, self.settings, name=self.source
            )
            engine.start()
            snapshots = await SnapshotStore.open(eventlog)
            self._deps = ReplicaDeps(
                pod_id=self.pod_id,
                eventlog=eventlog,
                engine=engine,
                modules=ModuleCache(engine, self.config.module_cache_dir()),
                components=ComponentCache(engine, self.config.module_cache_dir()),
                snapshots=snapshots,
                workers=workers,
                fetch_module=self._fetch_module,
                report=self._report,
                mailbox_size=self.config.mailbox_size,
                memory=memory,
                quarantine=lambda agent_id: quarantine_of(self.view, agent_id),
                http=http,
                budget=CallBudget(
                    max_http_request_bytes=self.config.net_max_request_bytes,
                    max_http_response_bytes=self.config.net_max_response_bytes,
                ),
                state_caps=self.config.state_caps(),
                guard=self.guard,
            )
            tasks = [asyncio.create_task(self.clock.run(), name="pod-loop-clock")]
            heartbeat.start()
            if not await heartbeat.wait_ready(self.config.lease_s):
                log.warning(
                    "heartbeat thread not connected yet; registering anyway",
                    pod_id=self.pod_id,
                    waited_s=self.config.lease_s,
                )
            await self._register()
            tasks += [
                asyncio.create_task(self._snapshot_loop(), name="pod-snapshots"),
                asyncio.create_task(self._metrics_loop(eventlog), name="pod-metrics"),
            ]
            log.info("pod started", pod_id=self.pod_id)
            await self._follow_until_stopped(eventlog)
            graceful = True
        finally:
            self.status = lifecycle.Status.STOPPING
            # First: a pod on its way out no longer claims its lease.
            await heartbeat.close()
            await cancel_and_wait(tasks)
            if graceful:
                await self._drain()
            else:
                for replica in [*self.replicas.values(), *self._retiring]:
                    replica.abort()
            if eventlog is not None:
                await eventlog.close()
            engine.stop()
            # Threads still inside a wasm call end at their deadline; do not wait for them.
            workers.shutdown()
            if memory is not None:
                memory.close()
            http.close()
            log.info("pod stopped", pod_id=self.pod_id, graceful=graceful)

    def _vector_memory(self) -> VectorMemory | None:
        url = self.settings.database_url
        if not url:
            log.info("vector memory unavailable: SWARM_DATABASE_URL is not set", pod_id=self.pod_id)
            return None
        # Connections open lazily, on an agent's first vector call; the one embedder of the pod
        # loads its model on the first text call (NotAvailable without the embeddings extra).
        return VectorMemory(
            url, pool_size=self.config.memory_connections, embedder=MiniLMEmbedder()
        )

    async def _drain(self) -> None:
        for replica in self.replicas.values():
            replica.stop(report=False, save=True)
        everyone = [*self.replicas.values(), *self._retiring]
        await asyncio.gather(*(r.wait() for r in everyone), return_exceptions=True)
        self.replicas.clear()
        self._retiring.clear()

    # -- registration and lease -------------------------------------------------------------------

    async def _register(self) -> None:
        c = self.config
        await self._send(
            commands.RegisterPod(
                pod_id=self.pod_id,
                capacity=Capacity(memory_mb=c.memory_mb, fuel_per_s=c.fuel_per_s, slots=c.slots),
                labels=dict(c.labels),
                zone=c.zone,
                energy_cost=c.energy_cost,
                lease_s=c.lease_s,
            )
        )

    # -- following the log ------------------------------------------------------------------------

    async def _follow_until_stopped(self, eventlog: EventLog) -> None:
        while not self._stop.is_set():
            try:
                await self._follow(eventlog)
            except (EventLogError, TimeoutError, OSError) as exc:
                log.warning(
                    "event feed interrupted; reading again",
                    error=str(exc) or type(exc).__name__,
                    applied_seq=self.view.applied_seq,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.2)

    async def _follow(self, eventlog: EventLog) -> None:
        await follow(
            eventlog,
            self.view,
            _WANTED,
            stop=self._stop,
            live=self.live,
            batch=self.config.fetch_batch,
            idle_s=self.config.idle_s,
            after_batch=self._reconcile,
            what="pod view",
        )

    async def _reconcile(self) -> None:
        _raise_swallowed_cancel()
        if self._deps is None:
            return
        if self.view.lost_seq > self._registered_after:
            # Declared lost (e.g. a long pause) while alive: register again to be ready; the
            # replicas it held were already moved and are stopped below.
            self._registered_after = self.view.lost_seq
            log.warning("this pod was declared lost; registering again", pod_id=self.pod_id)
            await self._register()
        wanted, stopping = self.view.wanted(), self.view.stopping()
        for replica_id, replica in list(self.replicas.items()):
            placed = replica.assignment.placed_seq
            want = wanted.get(replica_id)
            if want is not None and want.placed_seq == placed:
                continue
            stop = stopping.get(replica_id)
            del self.replicas[replica_id]
            self._retiring.add(replica)
            if stop is not None and stop.placed_seq == placed:
                replica.stop(report=True, save=True)
            elif self.view.preempted(replica_id, placed):
                # Preempted: the Hive already requested it again; save its state for the
                # placement that follows, but the report is not ours to send any more.
                replica.stop(report=False, save=True)
            else:
                # Crashed (already reported), moved to another pod, deleted, or disowned by a
                # refused report: not ours to save or report any more.
                replica.stop(report=False, save=False)
        for replica in self._retiring:
            # A deleted agent's replica runs no more calls, even when its stop came first (the
            # deletion may be folded a batch later): what is still queued is refused.
            if self.view.gone(replica.assignment.agent_id):
                replica.refuse_queued("agent deleted")
        for replica_id, assignment in wanted.items():
            if replica_id not in self.replicas:
                replica = self.replicas[replica_id] = Replica(assignment, self._deps)
                replica.start()
        for replica_id, assignment in stopping.items():
            key = (replica_id, assignment.placed_seq)
            if replica_id in self.replicas or key in self._reported_stopped:
                continue
            if any(r.replica_id == replica_id for r in self._retiring):
                continue
            # Asked to stop a replica this pod does not run (e.g. it restarted meanwhile).
            self._reported_stopped.add(key)
            await self._report(assignment, "stopped", "not running", assignment.snapshot)
        for replica in self._retiring:
            if replica.done:
                # Its last counters (say, the call that looped until its deadline) still go out.
                self._final_metrics.append(replica.metrics_json())
                # It answered for its placement (reported, or was not ours to report): if the
                # view still says stopping (the Hive has not folded the report yet), the pod
                # must not answer a second time with "not running".
                self._reported_stopped.add((replica.replica_id, replica.assignment.placed_seq))
        self._retiring = {r for r in self._retiring if not r.done}
        # Only placements still stopping can be reported again; forget the others.
        self._reported_stopped &= {(rid, a.placed_seq) for rid, a in stopping.items()}

    # -- what replicas borrow ---------------------------------------------------------------------

    async def _fetch_module(self, ref: ModuleRef) -> bytes:
        if ref.kind not in ("core", "component"):
            raise ModuleUnavailable(f"{ref.kind} modules are not supported by this pod")
        if ref.inline is not None:
            return base64.b64decode(ref.inline)
        assert ref.sha256 is not None
        assert self._eventlog is not None
        try:
            data: bytes | None = await (await LogAdmin(self._eventlog).modules()).get(ref.sha256)
        except NotFound:
            data = None
        if not data:
            raise ModuleUnavailable(
                f"module {ref.sha256} is not in the object store {names.OBJECT_STORE_MODULES} "
                "(push it with `swarm module push`)"
            )
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ModuleUnavailable(f"module {ref.sha256} in the object store has another digest")
        return bytes(data)

    async def _report(
        self, a: Assignment, status: Status, reason: str, snapshot: str | None
    ) -> None:
        if not self.view.owns(a.replica_id, a.placed_seq):
            # The log says the Hive no longer has it (deleted, stopped, moved, or a report
            # about it was refused): it would only refuse this one too.
            self.reports_dropped += 1
            log.debug(
                "report dropped: the replica is no longer this pod's",
                replica_id=a.replica_id,
                agent_id=a.agent_id,
                status=status,
            )
            return
        envelope = self._command(
            commands.ReportReplica(
                agent_id=a.agent_id,
                replica_id=a.replica_id,
                pod_id=self.pod_id,
                status=status,
                reason=reason[:2000],
                snapshot=snapshot,
            ),
            cause=a.cause,
        )
        # Before sending: the refusal cannot be folded before the view knows what it is about.
        self.view.watch(envelope.id, a.replica_id, a.placed_seq)
        await self._append(envelope)

    async def _send(self, payload: Payload) -> None:
        await self._append(self._command(payload))

    def _command(self, payload: Payload, cause: tuple[str, str] | None = None) -> Envelope[Any]:
        # A report names the placement that caused it, so `swarm trace` follows it.
        causation, correlation = cause or (None, None)
        return command(
            payload,
            source=self.source,
            identity=self.identity,
            causationid=causation,
            correlationid=correlation,
        )

    async def _append(self, envelope: Envelope[Any]) -> None:
        if self._eventlog is None:
            return
        payload = envelope.data
        request = AppendRequest.of(envelope)
        for attempt in range(1, _REPORT_ATTEMPTS + 1):
            try:
                await self._eventlog.append_raw(request)
                return
            except (EventLogError, OSError) as exc:
                # Same command id on every attempt: JetStream drops a retry that did land.
                log.warning("command not sent", type=payload.TYPE, attempt=attempt, error=str(exc))
                await asyncio.sleep(0.2 * attempt)

    # -- periodic work ----------------------------------------------------------------------------

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.snapshot_interval_s)
            running = [r for r in self.replicas.values() if r.state is State.RUNNING]
            await asyncio.gather(*(r.save_if_changed() for r in running))

    async def _metrics_loop(self, eventlog: EventLog) -> None:
        subject = names.metrics_subject(self.pod_id, names.METRIC_AGENT)
        while True:
            await asyncio.sleep(self.config.metrics_interval_s)
            body = json.dumps(
                {
                    "pod_id": self.pod_id,
                    # The pod's clock: rates are counter deltas over these times.
                    "time_ms": time.time_ns() // 1_000_000,
                    "pod": {
                        **self.metrics_json(),
                        # The worst lateness of the event loop since the last message: how
                        # starved the pod is (CPU), whatever its agents do.
                        "loop_lag_ms": round(self.clock.worst() * 1000, 3),
                    },
                    "replicas": [
                        *(r.metrics_json() for r in (*self.replicas.values(), *self._retiring)),
                        *self._final_metrics,
                    ],
                }
            ).encode()
            self._final_metrics = []
            with contextlib.suppress(EventLogError, OSError):
                await eventlog.publish(subject, body)

    def metrics_json(self) -> dict[str, JSON]:
        """The pod's own counters (beside its replicas' rows in every metrics message)."""
        heartbeat = self.heartbeat
        return {
            "reports_dropped": self.reports_dropped,
            "reports_refused": self.view.refusals,
            "heartbeats": heartbeat.beats if heartbeat is not None else 0,
            "probes_answered": heartbeat.answers if heartbeat is not None else 0,
            # Mesh messages the guard kept from the agents: not signed (or forged, or by a
            # stranger, or answered elsewhere), signed but claiming what the signer may not,
            # and taken already (a replay).
            "mesh_unauthenticated": self.guard.refused["unauthenticated"] if self.guard else 0,
            "mesh_forbidden": self.guard.refused["forbidden"] if self.guard else 0,
            "mesh_replayed": self.guard.refused["replayed"] if self.guard else 0,
        }


def _raise_swallowed_cancel() -> None:
    """Cancelling `run()` is the abrupt stop, so it must not be lost: Python 3.11's `wait_for`
    (inside nats-py's fetch) returns a fetch that finished as the cancellation arrived and drops
    the cancellation, and the follow loop would go on. The task still counts the request
    (`cancelling()`), so it is raised again here, after every batch."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def main() -> None:
    settings = load(Settings, "setting")
    configure_logging(settings.log_level, settings.log_format)
    await run_until_signalled(Pod(settings, load_pod_settings()))


__all__ = ["Pod", "main"]
