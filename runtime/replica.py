"""One replica of an agent on this pod: its sandbox, its host, its mailbox and its life.

Life: `start()` runs one task that restores the kv state from a snapshot, reports `starting`,
loads the module, instantiates the sandbox (which runs `swarm_init`), subscribes to the agent's
mesh subject and reports `running`; then it handles the mailbox one message at a time (so
messages of one sender are handled in the order they arrived) until it is stopped or breaks.

* Sandbox calls are CPU-bound and may run to their deadline: they run on the pod's worker
  threads, never on the event loop, so heartbeats and other agents keep going; the pool shares
  threads out per agent (runtime/workers.py), so one agent's replicas cannot take them all.
* Key-value state is capped (`SandboxLimits.state_bytes` / `state_keys`, runtime/kvstate.py): a
  kv_put beyond the caps is LIMIT to the agent, counted as `kv_refused`. A state restored over
  the caps (lowered since it was saved) is kept, and only writes that do not grow it succeed.
* Snapshots: the state is saved every `snapshot_interval_s` when it changed, and on stop and
  crash. A save that fails is an error log and the metrics `snapshot_failures` (a count) and
  `snapshot_error` (the last reason, cleared by a save that works); the final report of a
  replica whose last save failed says so in its reason.
* The mailbox is bounded: a message arriving when `mailbox_size` are waiting is answered at once
  with `{"error": "mailbox full"}` (backpressure, not memory).
* Its own subject: the replica also takes direct messages on `mesh_replica_subject(id)` (no
  queue group), which is how the scheduler's task distributor hands a task to the replica it
  picked; they are handled and answered like messages to the agent's subject.
* Topics: the replica also subscribes to `mesh_topic_subject(t)` for each topic `t` of its spec,
  in the agent's queue group, so each topic message reaches one replica of every subscribed
  agent. Topic messages share the mailbox but are fire-and-forget: never answered (even when
  the publisher asked for a reply), and dropped and counted (`topic_dropped`) when the mailbox
  is full or the replica is not running.
* A call failing with a `SandboxError` breaks the instance: the replica stops listening (its
  siblings in the queue group get the traffic), answers what it had queued with the error, saves
  its kv (effects of host calls happen when called, ABI.md) and reports `crashed`. The Hive
  decides about a restart; the pod starts the replica again only when the log places it again.
* Quarantine: while the log says the agent is quarantined (`agent.quarantined`), direct messages
  are answered at once with `{"error": "agent is quarantined: <reason>"}` and topic messages are
  dropped; the replica keeps running (its state is kept for inspection) until released.
* Reply body: the agent's `reply()` outputs concatenated, header `Swarm-Status` = the agent's
  return code. Errors (the platform's, not the agent's): `{"error": "..."}` with header
  `Swarm-Error: 1`, so an agent replying JSON with an "error" key is never mistaken for one.
* Identity (a stack's pods, given its principals: runtime/meshguard.py): every direct and topic
  message is checked by the pod's `MeshGuard`, its claims before it reaches the mailbox and its
  signature on the worker thread that then calls the agent (`Replica._call`); one it refuses
  (unsigned, forged, a claim its signer may not make, an agent of another namespace, an answer
  that would go to another than its signer, one this agent took already) is answered with the
  reason as an error, or dropped if a topic message, and counted (`mesh_refused`). What the replica
  sends is signed with the pod's key as `agent:<agent id>` with its replica and placement
  (`MeshClaim`): its replies, on the requester's reply subject alone, and its agent's `send`s,
  to its own namespace's agents or to topics. The agent never names a subject: the host does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import functools
import json
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from runtime.abi import Destination, LogLevel
from runtime.components import ComponentCache, ComponentSandbox, is_component
from runtime.engine import SandboxEngine
from runtime.errors import SandboxError
from runtime.host import JSON, NotAvailable, VectorHit
from runtime.kvstate import KvState, StateCaps, StateFull
from runtime.limits import CallBudget, SandboxLimits
from runtime.memory import AgentMemory, VectorMemory
from runtime.meshguard import MeshGuard
from runtime.modules import ModuleCache
from runtime.net import HttpFetcher, HttpRequest, HttpResponse
from runtime.podview import Assignment
from runtime.sandbox import AgentSandbox, CallResult
from runtime.snapshots import SnapshotRef, SnapshotStore
from runtime.workers import WorkerPool
from schemas import names
from schemas.commands import ReplicaStatus
from schemas.specs import ModuleRef
from swarm.kernel.eventlog import EventLog, EventLogError, Message, Subscription
from swarm.kernel.signing import MeshClaim, MeshSignature

log = structlog.get_logger(__name__)

T = TypeVar("T")

HEADER_STATUS = names.HEADER_AGENT_STATUS
HEADER_ERROR = names.HEADER_AGENT_ERROR
_LEVELS = {LogLevel.DEBUG: "debug", LogLevel.INFO: "info", LogLevel.WARN: "warn"}

#: What a replica reports of itself: the command's own values (`replica.report`).
Status = ReplicaStatus
Report = Callable[[Assignment, Status, str, str | None], Awaitable[None]]


class ModuleUnavailable(Exception):
    """The module cannot be had (not in the object store, or of a kind this pod cannot run)."""


@dataclass(frozen=True, slots=True)
class ReplicaDeps:
    """What a replica borrows from its pod."""

    pod_id: str
    eventlog: EventLog
    engine: SandboxEngine
    modules: ModuleCache
    snapshots: SnapshotStore
    #: The pod's wasm threads, shared out per agent.
    workers: WorkerPool
    fetch_module: Callable[[ModuleRef], Awaitable[bytes]]
    report: Report
    mailbox_size: int
    #: Vector memory (Postgres), None when the pod has no SWARM_DATABASE_URL. Its `embedder`
    #: (the pod's one MiniLM, loaded on first use) embeds the text of vector requests.
    memory: VectorMemory | None = None
    #: Compiled components (Python agents); None: this pod runs core modules only.
    components: ComponentCache | None = None
    #: agent id -> why it is quarantined (None: it is not); from the pod's view of the log.
    quarantine: Callable[[str], str | None] | None = None
    #: Makes the HTTP requests of agents granted "net"; None: this pod makes none (UNAVAILABLE).
    http: HttpFetcher | None = None
    #: Per-call host budget of every sandbox (None: `CallBudget()`'s defaults).
    budget: CallBudget | None = None
    #: The pod's bounds on every replica's kv state (the spec's caps apply when lower).
    state_caps: StateCaps | None = None
    #: Checks who sent each mesh message before the agent sees it; None: nobody is checked
    #: (a stack whose pods are given no principals).
    guard: MeshGuard | None = None


def claim_of(a: Assignment) -> MeshClaim:
    """Who a replica's messages are from: its agent, from this replica, at this placement."""
    return MeshClaim(f"agent:{a.agent_id}", a.replica_id, a.placed_seq)


class State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    BROKEN = "broken"
    STOPPING = "stopping"
    STOPPED = "stopped"


def error_body(reason: str) -> bytes:
    return json.dumps({"error": reason}).encode()


class PodHost:
    """The `HostAPI` of one replica. Called on a worker thread, inside a wasm call."""

    def __init__(
        self,
        assignment: Assignment,
        deps: ReplicaDeps,
        loop: asyncio.AbstractEventLoop,
        kv: dict[str, bytes],
        *,
        publish_timeout_s: float,
        state_caps: StateCaps | None = None,
    ) -> None:
        self._a = assignment
        self._deps = deps
        self._loop = loop
        self._kv = KvState(kv, state_caps)
        #: Bumped by every change of the kv state; the snapshot loop saves when it moved.
        self.kv_version = 0
        #: kv_puts refused because the state was at its caps.
        self.kv_refused = 0
        #: http_request calls that reached the pod's fetcher (refused targets included).
        self.http_requests = 0
        self._lock = threading.Lock()
        self._publish_timeout_s = publish_timeout_s
        self._pending: set[concurrent.futures.Future[None]] = set()
        # Namespaced by agent id: its replicas share the memory, other agents never see it.
        self._memory = AgentMemory(deps.memory, assignment.agent_id) if deps.memory else None
        self._claim = claim_of(assignment)

    def kv_state(self) -> tuple[dict[str, bytes], int]:
        with self._lock:
            return self._kv.copy(), self.kv_version

    def kv_usage(self) -> tuple[int, int]:
        """(bytes, keys) the state holds now."""
        with self._lock:
            return self._kv.size, len(self._kv)

    def kv_get(self, key: str) -> bytes | None:
        with self._lock:
            return self._kv.get(key)

    def kv_put(self, key: str, value: bytes) -> None:
        with self._lock:
            try:
                self._kv.put(key, value)
            except StateFull:
                self.kv_refused += 1
                raise
            self.kv_version += 1

    def kv_delete(self, key: str) -> bool:
        with self._lock:
            if self._kv.pop(key, None) is None:
                return False
            self.kv_version += 1
            return True

    def send(self, to: Destination, message: bytes) -> None:
        if to.kind == "agent":
            # Agents address each other by name within their own namespace.
            subject = names.mesh_agent_subject(self._a.namespace, to.name)
        else:
            subject = names.mesh_topic_subject(to.name)
        future = asyncio.run_coroutine_threadsafe(
            # Signed here, on the worker thread (libsodium runs without the GIL).
            self._deps.eventlog.publish(
                subject,
                message,
                headers=self._deps.eventlog.mesh_headers(subject, message, self._claim),
            ),
            self._loop,
        )
        try:
            # Waited for (briefly) so that a dead connection is reported as UNAVAILABLE.
            future.result(self._publish_timeout_s)
        except Exception as exc:
            future.cancel()
            raise NotAvailable(f"cannot send to {to}: {exc or type(exc).__name__}") from None

    def emit(self, type: str, data: bytes) -> None:
        # Agent events go to the agent's log stream for now: SWARM_EVENTS is the Hive's alone.
        self._publish_line("info", {"kind": "event", "type": type, "data": _text(data)})

    def log(self, level: LogLevel, message: str) -> None:
        self._publish_line(_LEVELS.get(level, "error"), {"kind": "log", "message": message})

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def random(self, size: int) -> bytes:
        return os.urandom(size)

    def vector_store(self, id: str, vector: Sequence[float], data: JSON) -> None:
        if self._memory is None:
            raise NotAvailable("vector memory is not available on this pod (no database)")
        self._memory.vector_store(id, vector, data)

    def vector_search(self, vector: Sequence[float], k: int) -> list[VectorHit]:
        if self._memory is None:
            raise NotAvailable("vector memory is not available on this pod (no database)")
        return self._memory.vector_search(vector, k)

    def vector_store_text(self, id: str, text: str, data: JSON) -> None:
        # VectorMemory embeds with its embedder: NotAvailable without the embeddings extra.
        m = self._agent_memory()
        m.memory.store_text(m.namespace, id, text, data)

    def vector_search_text(self, text: str, k: int) -> list[VectorHit]:
        m = self._agent_memory()
        return m.memory.search_text(m.namespace, text, k)

    def http_request(self, request: HttpRequest) -> HttpResponse:
        if self._deps.http is None:
            raise NotAvailable("this pod makes no network requests")
        with self._lock:
            self.http_requests += 1
        return self._deps.http.fetch(request)

    def _agent_memory(self) -> AgentMemory:
        if self._memory is None:
            raise NotAvailable("vector memory is not available on this pod (no database)")
        return self._memory

    def _publish_line(self, level: str, fields: dict[str, JSON]) -> None:
        body = json.dumps(
            {
                "time_ms": self.now_ms(),
                "pod_id": self._deps.pod_id,
                "agent_id": self._a.agent_id,
                "replica_id": self._a.replica_id,
                "namespace": self._a.namespace,
                "name": self._a.name,
                "level": level,
                **fields,
            }
        ).encode()
        subject = names.logs_subject(self._deps.pod_id, level)
        # Fire and forget: logs are lossy by design and must not slow the agent down.
        future = asyncio.run_coroutine_threadsafe(
            self._deps.eventlog.publish(subject, body), self._loop
        )
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


@dataclass(slots=True)
class Metrics:
    calls: int = 0
    errors: int = 0
    fuel_used: int = 0
    last_latency_ms: float = 0.0
    memory_bytes: int = 0
    rejected: int = 0
    logs_dropped: int = 0
    #: Topic messages put in the mailbox, and those dropped (mailbox full, or not running).
    topic_messages: int = 0
    topic_dropped: int = 0
    #: Every message that arrived (direct, topic or task; handled, refused or dropped): demand.
    received: int = 0
    #: Milliseconds spent inside handle calls: calls / busy time is what one replica can carry.
    busy_ms: float = 0.0
    #: Messages the pod's guard refused (unauthenticated or forbidden): the agent saw none.
    mesh_refused: int = 0


@dataclass(frozen=True, slots=True)
class Mail:
    """One mailbox entry: a direct message (answered) or a topic message (never answered)."""

    msg: Message
    topic: str | None = None
    #: Its signature, read and admitted as it arrived (`MeshGuard.admit`), whose arithmetic the
    #: worker thread checks before it calls the agent (`Replica._call`); None: nothing to check.
    signature: MeshSignature | None = None


@dataclass(frozen=True, slots=True)
class _Handled:
    """What a call of the agent gave (`Replica._call`)."""

    result: CallResult
    #: The answer: the agent's replies, concatenated.
    body: bytes
    #: The answer's signature headers (empty: the pod signs nothing, or nobody asked).
    signed: dict[str, str]


class Replica:
    def __init__(self, assignment: Assignment, deps: ReplicaDeps) -> None:
        self.assignment = assignment
        self.deps = deps
        self._claim = claim_of(assignment)
        self.state = State.NEW
        self.metrics = Metrics()
        #: Why the replica broke or could not start.
        self.failure: str | None = None
        #: The snapshot it resumed from, then the last one it saved.
        self.snapshot: SnapshotRef | None = None
        #: Saves that failed, and why the last one did (None once a save works again).
        self.snapshot_failures = 0
        self.snapshot_error: str | None = None
        #: True while a sandbox call of this replica runs on a worker thread.
        self._in_call = False
        self._saved_version = 0
        self._save_lock = asyncio.Lock()
        self._mailbox: asyncio.Queue[Mail | None] = asyncio.Queue()
        self._sub: Subscription | None = None
        #: This replica's own subject (no queue group): tasks the distributor picked it for.
        self._replica_sub: Subscription | None = None
        self._topic_subs: list[Subscription] = []
        self._sandbox: AgentSandbox | ComponentSandbox | None = None
        self._scratch: Path | None = None
        self._host: PodHost | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop_report = False
        self._stop_save = False
        self._stopping = False
        #: Set by `refuse_queued`: the error queued messages get instead of a call.
        self._refuse: str | None = None

    @property
    def replica_id(self) -> str:
        return self.assignment.replica_id

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    @property
    def in_call(self) -> bool:
        """True while a sandbox call of this replica runs on a worker thread."""
        return self._in_call

    @property
    def unsaved(self) -> bool:
        """True while kv changes wait for the next snapshot."""
        return self._host is not None and self._host.kv_version != self._saved_version

    def start(self) -> None:
        """Start the replica's task; a second call does nothing."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"replica-{self.replica_id}")

    def stop(self, *, report: bool, save: bool) -> None:
        """Ask the replica to finish: messages already queued are handled first (drain; see
        `refuse_queued` for a deleted agent's replica, which stops at once).

        `save` writes a last snapshot; `report` sends `stopped` with it. A replica moved to
        another pod does neither: it is no longer ours to save or report. Safe twice.
        """
        if self._stopping:
            return
        self._stopping = True
        self._stop_report, self._stop_save = report, save
        self._mailbox.put_nowait(None)  # unbounded queue: the sentinel always fits
        if self._task is None:
            self.state = State.STOPPED

    def refuse_queued(self, error: str) -> None:
        """From now on, answer queued messages with `error` instead of calling the agent (its
        agent was deleted after the replica was asked to stop and drain). Safe twice."""
        if self._refuse is None:
            self._refuse = error

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    def abort(self) -> None:
        """Drop everything now, save nothing (the pod is going away as if killed)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
        # A running call holds the sandbox until its deadline; closing would wait for it on the
        # event loop. Its thread drops the instance when the call ends.
        if self._sandbox is not None and not self._in_call:
            self._sandbox.close()
        self.state = State.STOPPED

    async def save_if_changed(self) -> None:
        """Save the kv state if an agent's kv_put changed it since the last save."""
        host = self._host
        if (
            host is None
            or self.state is not State.RUNNING
            or host.kv_version == self._saved_version
        ):
            return
        await self._save()

    def metrics_json(self) -> dict[str, JSON]:
        m = self.metrics
        state_bytes, state_keys = self._host.kv_usage() if self._host is not None else (0, 0)
        return {
            "agent_id": self.assignment.agent_id,
            "replica_id": self.replica_id,
            "namespace": self.assignment.namespace,
            "name": self.assignment.name,
            "state": self.state.value,
            "calls": m.calls,
            "errors": m.errors,
            "fuel_used": m.fuel_used,
            "last_latency_ms": round(m.last_latency_ms, 3),
            "memory_bytes": m.memory_bytes,
            "mailbox": self._mailbox.qsize(),
            "rejected": m.rejected,
            "logs_dropped": m.logs_dropped,
            "topic_messages": m.topic_messages,
            "topic_dropped": m.topic_dropped,
            "received": m.received,
            "mesh_refused": m.mesh_refused,
            "busy_ms": round(m.busy_ms, 3),
            "http_requests": self._host.http_requests if self._host is not None else 0,
            "state_bytes": state_bytes,
            "state_keys": state_keys,
            "kv_refused": self._host.kv_refused if self._host is not None else 0,
            "snapshot_failures": self.snapshot_failures,
            "snapshot_error": self.snapshot_error,
            "task_queues": list(self.assignment.spec.task_queues),
        }

    # -- the replica's task -----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            started = await self._start()
        except SandboxError as exc:
            await self._fail_start(exc.reason)
            return
        except ModuleUnavailable as exc:
            await self._fail_start(str(exc))
            return
        except Exception as exc:  # the pod's side (NATS, a corrupt snapshot): still reported
            log.exception("replica start failed", replica_id=self.replica_id)
            await self._fail_start(f"pod error: {type(exc).__name__}: {exc}")
            return
        if started:
            await self._serve()
        await self._finish()

    def _scratch_dir(self, components: ComponentCache) -> Path | None:
        """The replica's "fs" directory, `<cache_dir>/../scratch/<replica_id>` (created, 0700);
        None if the pod keeps no cache directory (the sandbox then refuses the grant)."""
        if components.cache_dir is None:
            return None
        path = components.cache_dir.parent / "scratch" / self.replica_id
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    async def _start(self) -> bool:
        self.state = State.STARTING
        a = self.assignment
        kv = await self._restore()
        await self._report("starting", "", str(self.snapshot) if self.snapshot else None)
        work = self._work
        components = self.deps.components
        ref = a.spec.module
        # A component this machine compiled before needs no fetch: its 18 MB were most of a
        # cached redeploy's second (bench/agents.py).
        compiled_before = (
            await work(components.cached, ref.sha256)
            if components is not None and ref.sha256 is not None and ref.kind != "core"
            else None
        )
        wasm = b"" if compiled_before is not None else await self.deps.fetch_module(ref)
        loop = asyncio.get_running_loop()
        limits = SandboxLimits.from_spec(
            a.spec, budget=self.deps.budget, pod_state=self.deps.state_caps
        )
        host = PodHost(
            a,
            self.deps,
            loop,
            kv,
            publish_timeout_s=min(1.0, limits.deadline_ms / 2000),
            state_caps=limits.state_caps,
        )
        self._host = host
        size, keys = host.kv_usage()
        if size > limits.state_bytes or keys > limits.state_keys:
            log.warning(
                "restored state is over its caps; it is kept, and writes that grow it are refused",
                replica_id=a.replica_id,
                state_bytes=size,
                state_keys=keys,
                caps=str(limits.state_caps),
            )
        if compiled_before is not None or is_component(wasm):
            if components is None:
                raise ModuleUnavailable("this pod does not run WebAssembly components")
            component = (
                compiled_before
                if compiled_before is not None
                else await work(components.load, wasm)
            )
            scratch = None
            if "fs" in limits.capabilities:
                scratch = await work(self._scratch_dir, components)
                self._scratch = scratch
            self._sandbox = await work(
                functools.partial(
                    ComponentSandbox, components, component, limits, host, scratch_dir=scratch
                )
            )
        else:
            compiled = await work(self.deps.modules.load, wasm)
            self._sandbox = await work(AgentSandbox, self.deps.engine, compiled, limits, host)
        self._saved_version = 0  # swarm_init's kv_puts are new state worth saving
        if self._stopping:
            return True  # stopped while starting: _serve finds the sentinel at once
        self._sub = await self.deps.eventlog.subscribe(
            names.mesh_agent_subject(a.namespace, a.name),
            self._on_message,
            # One queue group per agent: each request is answered by one of its replicas.
            queue=a.agent_id,
        )
        self._replica_sub = await self.deps.eventlog.subscribe(
            names.mesh_replica_subject(a.replica_id), self._on_message
        )
        for topic in dict.fromkeys(a.spec.topics):
            self._topic_subs.append(
                await self.deps.eventlog.subscribe(
                    names.mesh_topic_subject(topic),
                    self._topic_callback(topic),
                    # The same queue name per agent: one replica of each subscribed agent.
                    queue=a.agent_id,
                )
            )
        # "Running" means "answers": the server must have our subscriptions before anyone is
        # told (a request right after the report found no responders on a busy machine). A
        # flush that times out changes nothing that was not already so.
        with contextlib.suppress(EventLogError, TimeoutError):
            await self.deps.eventlog.flush(timeout=5)
        self.state = State.RUNNING
        await self._report("running", "", None)
        log.info("replica running", replica_id=a.replica_id, pod_id=self.deps.pod_id)
        return True

    async def _restore(self) -> dict[str, bytes]:
        a = self.assignment
        if a.exact:
            return await self._restore_exact()
        # Two candidates: the snapshot the log names (e.g. the stopped replica this one replaces)
        # and this replica's own key, where it saved interval snapshots the log never heard of
        # (its pod was lost between two reports). The newer wins: KV revisions are sequences of
        # one stream, so they order saves across keys.
        candidates = [SnapshotRef(self.deps.snapshots.bucket, a.replica_id, 0)]
        named = SnapshotRef.parse(a.snapshot) if a.snapshot else None
        if named is not None and named.key != a.replica_id:
            candidates.append(named)
        newest: tuple[dict[str, bytes], SnapshotRef] | None = None
        for ref in candidates:
            loaded = await self.deps.snapshots.load(ref)
            if loaded is not None and (newest is None or loaded[1].revision > newest[1].revision):
                newest = loaded
        if newest is None:
            return {}
        kv, self.snapshot = newest
        return kv

    async def _restore_exact(self) -> dict[str, bytes]:
        """A healing rewind: the newest state it saved before the anomaly began (its own key's
        history), else exactly the named snapshot, else an empty state; never the newer,
        possibly bad, state."""
        a = self.assignment
        if a.restore_before is not None:
            found = await self.deps.snapshots.load_before(a.replica_id, a.restore_before)
            if found is not None:
                state, self.snapshot = found
                return state
        ref = SnapshotRef.parse(a.snapshot) if a.snapshot else None
        if ref is None:
            return {}
        kv = await self.deps.snapshots.load_exact(ref)
        if kv is None:
            log.warning(
                "rewind snapshot no longer kept; starting empty",
                replica_id=a.replica_id,
                snapshot=a.snapshot,
            )
            return {}
        self.snapshot = ref
        return kv

    def _quarantined(self) -> str | None:
        check = self.deps.quarantine
        return check(self.assignment.agent_id) if check is not None else None

    async def _on_message(self, msg: Message) -> None:
        # Runs on the connection's delivery task: decide quickly, never run the agent here.
        self.metrics.received += 1
        refused, signature = await self._admitted(msg, self.assignment.namespace)
        quarantined = self._quarantined() if refused is None else None
        if refused is not None:
            await self._answer(msg, error=refused)
        elif quarantined is not None:
            self.metrics.rejected += 1
            await self._answer(msg, error=f"agent is quarantined: {quarantined}")
        elif self.state is not State.RUNNING or self._stopping:
            await self._answer(msg, error=self.failure or "agent is not running")
        elif self._mailbox.qsize() >= self.deps.mailbox_size:
            self.metrics.rejected += 1
            await self._answer(msg, error="mailbox full")
        else:
            self._mailbox.put_nowait(Mail(msg, signature=signature))

    async def _admitted(
        self, msg: Message, namespace: str | None
    ) -> tuple[str | None, MeshSignature | None]:
        """Why the pod's guard keeps `msg` from the agent (counted), or None; and the signature
        to check before the agent is called (`_call`)."""
        guard = self.deps.guard
        if guard is None:
            return None, None
        reason, signature = await guard.admit(msg, namespace, self.assignment.agent_id)
        if reason is not None:
            self.metrics.mesh_refused += 1
        return reason, signature

    def _topic_callback(self, topic: str) -> Callable[[Message], Awaitable[None]]:
        async def on_topic_message(msg: Message) -> None:
            # Fire-and-forget: nobody to tell about a drop, so it is only counted.
            self.metrics.received += 1
            refused, signature = await self._admitted(msg, None)
            if refused is not None or (
                self.state is not State.RUNNING
                or self._stopping
                or self._mailbox.qsize() >= self.deps.mailbox_size
                or self._quarantined() is not None
            ):
                self.metrics.topic_dropped += 1
            else:
                self.metrics.topic_messages += 1
                self._mailbox.put_nowait(Mail(msg, topic, signature))

        return on_topic_message

    async def _work(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on one of the pod's worker threads, as this replica's agent."""
        return await self.deps.workers.run(self.assignment.agent_id, fn, *args)

    def _call(self, sandbox: AgentSandbox | ComponentSandbox, mail: Mail) -> _Handled | str:
        """On a worker thread: the message's signature checked, one call of the agent, then
        its answer's signature; or why the message's signature does not hold (the agent is not
        called). libsodium runs without the GIL: the ~110 us of a check and the ~45 us of a
        signature run beside the event loop.

        The check is made here, with the call, rather than on a thread of its own as the
        message arrives: each handover between threads costs the event loop a future, a
        wake-up and a turn (more than the check itself, on two busy cores), and the pod's
        event loop is what bounds its mesh throughput. Signed requests to one echo replica, 64
        in flight (bench/security.py, same machine, alternating): 0.57x and 0.57x of unsigned
        with the check on the guard's threads, 0.74x and 0.64x here; the whole bench 0.49x and
        0.64x before, 0.71x and 0.72x after."""
        if mail.signature is not None:
            guard = self.deps.guard
            assert guard is not None  # only a guard admits a signature
            refused = guard.verify(mail.msg, mail.signature)
            if refused is not None:
                return refused
        self._in_call = True
        try:
            result = sandbox.handle(mail.msg.data)
        finally:
            self._in_call = False
        body = b"".join(result.replies)
        reply = mail.msg.reply if mail.topic is None else ""
        signed = self.deps.eventlog.mesh_headers(reply, body, self._claim) if reply else {}
        return _Handled(result, body, signed)

    async def _serve(self) -> None:
        sandbox = self._sandbox
        assert sandbox is not None
        while True:
            mail = await self._mailbox.get()
            if mail is None:
                return
            if self._refuse is not None:
                await self._answer(mail, error=self._refuse)
                continue
            started = time.perf_counter()
            try:
                handled = await self._work(self._call, sandbox, mail)
            except ValueError as exc:  # message over the budget: refused, the instance is fine
                self._called(started)
                self.metrics.errors += 1
                await self._answer(mail, error=str(exc))
                continue
            except SandboxError as exc:
                self._called(started)
                self.metrics.errors += 1
                self.failure = exc.reason
                self.state = State.BROKEN
                log.warning("replica broke", replica_id=self.replica_id, reason=exc.reason)
                await self._answer(mail, error=exc.reason)
                return
            if isinstance(handled, str):  # its signature did not hold: the agent never saw it
                assert self.deps.guard is not None
                self.deps.guard.count(handled)
                self.metrics.mesh_refused += 1
                if mail.topic is not None:
                    self.metrics.topic_dropped += 1
                    self.metrics.topic_messages -= 1
                await self._answer(mail, error=handled)
                continue
            self._called(started)
            result = handled.result
            m = self.metrics
            m.fuel_used += result.fuel_used
            m.memory_bytes = result.memory_bytes
            m.logs_dropped += result.logs_dropped
            if not result.ok:
                m.errors += 1
            await self._answer(mail, body=handled.body, status=result.status, signed=handled.signed)

    def _called(self, started: float) -> None:
        self.metrics.calls += 1
        self.metrics.last_latency_ms = (time.perf_counter() - started) * 1000
        self.metrics.busy_ms += self.metrics.last_latency_ms

    async def _finish(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await _quietly(sub.close())
        if self._replica_sub is not None:
            sub, self._replica_sub = self._replica_sub, None
            await _quietly(sub.close())
        topic_subs, self._topic_subs = self._topic_subs, []
        for sub in topic_subs:
            await _quietly(sub.close())
        broken = self.state is State.BROKEN
        if not broken:
            self.state = State.STOPPING
        # Whatever is still queued came after the stop or the failure.
        while not self._mailbox.empty():
            mail = self._mailbox.get_nowait()
            if mail is not None:
                await self._answer(mail, error=self.failure or "agent stopped")
        if self._sandbox is not None:
            self._sandbox.close()
        if broken:
            await self._save()
            reason = self.failure or "broken"
            await self._report("crashed", self._with_save_error(reason), self._ref())
            return
        if self._stop_save:
            await self._save()
        if self._scratch is not None:
            # Stopped for good: the scratch directory is not state (snapshots are), so it goes.
            # After a crash it stays, for a restart on this pod and for a look at what was there.
            scratch, self._scratch = self._scratch, None
            await self._work(functools.partial(shutil.rmtree, scratch, ignore_errors=True))
        self.state = State.STOPPED
        if self._stop_report:
            await self._report("stopped", self._with_save_error("stopped"), self._ref())

    def _with_save_error(self, reason: str) -> str:
        if self.snapshot_error is None:
            return reason
        return f"{reason}; its last state was not saved ({self.snapshot_error})"

    async def _fail_start(self, reason: str) -> None:
        self.failure = reason
        if self._sandbox is not None:
            self._sandbox.close()
        log.warning("replica failed to start", replica_id=self.replica_id, reason=reason)
        if self._stopping and self._stop_report:
            # Asked to stop meanwhile: what the Hive waits for is `stopped`, not a crash to
            # restart from.
            self.state = State.STOPPED
            await self._report("stopped", f"stopped before it started ({reason})", self._ref())
            return
        self.state = State.BROKEN
        await self._report("crashed", f"failed to start: {reason}", self._ref())

    async def _save(self) -> None:
        host = self._host
        if host is None:
            return
        async with self._save_lock:
            state, version = host.kv_state()
            if version == self._saved_version and self.snapshot is not None:
                return
            try:
                self.snapshot = await self.deps.snapshots.save(self.replica_id, state)
            except Exception as exc:  # a failed save must not take the pod down; the next may work
                self.snapshot_failures += 1
                self.snapshot_error = f"{type(exc).__name__}: {exc}"[:500]
                log.error(
                    "snapshot not saved: the state since the last save would be lost",
                    replica_id=self.replica_id,
                    agent_id=self.assignment.agent_id,
                    state_bytes=sum(len(k) + len(v) for k, v in state.items()),
                    failures=self.snapshot_failures,
                    error=self.snapshot_error,
                )
                return
            self.snapshot_error = None
            self._saved_version = version

    def _ref(self) -> str | None:
        return str(self.snapshot) if self.snapshot else self.assignment.snapshot

    async def _report(self, status: Status, reason: str, snapshot: str | None) -> None:
        await self.deps.report(self.assignment, status, reason, snapshot)

    async def _answer(
        self,
        mail: Message | Mail,
        *,
        body: bytes = b"",
        status: int = 0,
        error: str | None = None,
        signed: Mapping[str, str] | None = None,
    ) -> None:
        """Answer on the message's reply subject (a topic message gets none), signed as this
        replica's agent: `signed` when the worker thread signed it already (`_call`)."""
        if isinstance(mail, Mail):
            if mail.topic is not None:  # topic messages are fire-and-forget (ABI.md)
                return
            msg = mail.msg
        else:
            msg = mail
        if not msg.reply:  # a one-way `send` from another agent: nobody to answer
            return
        if error is not None:
            body, headers = error_body(error), {HEADER_ERROR: "1"}
        else:
            headers = {HEADER_STATUS: str(status)}
        # Signed as this replica's agent: the requester can check who answered.
        if signed:
            headers |= signed
        claim = None if signed else self._claim
        await _quietly(self.deps.eventlog.publish(msg.reply, body, headers=headers, claim=claim))


async def _quietly(awaitable: Coroutine[Any, Any, Any]) -> None:
    """Answers and unsubscribes may fail when the connection is going; that is not our failure."""
    try:
        await awaitable
    except Exception as exc:
        log.debug("nats call failed", error=str(exc) or type(exc).__name__)
