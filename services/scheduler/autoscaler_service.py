"""The autoscaler and the task distributor: the I/O around `autoscale.py` and `tasks.py`.

Four loops on one NATS connection, sharing one `Autoscaler` (whose `MetricsFold` the
distributor reads too):

* events: SWARM_EVENTS replayed from the first message with an ordered ephemeral reader, then
  followed (like the scheduler: no stored position), folding agents' policies and counts;
* metrics: SWARM_METRICS from now on (`swarm.metrics.*.agent`), folding pods' samples;
* ticks: every `step_s`, once the events are caught up, `Autoscaler.tick` and one `agent.scale`
  command per decision, carrying the decision and its forecast (the Hive copies it into
  `agent.scaled`);
* tasks: the durable `task-distributor` consumer of SWARM_TASKS; each task goes, as a request,
  to the subject of the replica `TaskBoard` picks, and is acknowledged once a replica answered
  (another replica is tried when one refuses or is gone; none left: redelivered later). Given
  the stack's principals, an answer counts only signed by the pod the log places the replica
  on, speaking as its agent (`swarm.domain.policy.answer_refusal`): any pod may listen on any
  replica's subject.

Restart: forecasters start empty (they need two samples per agent before they see a trend) and
decisions are taken from the counts on the log, so a restarted autoscaler never repeats a scale
the Hive recorded. Run it inside the scheduler process (beside `Scheduler.run()`, sharing its
stop) or on its own with `python -m services.scheduler.autoscaler_service`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import command, commands, names
from services.scheduler.autoscale import HANDLED, Autoscaler, SampleError, ScaleRequest
from services.scheduler.tasks import TaskBoard
from swarm.devstack.principals import Roster
from swarm.domain.policy import answer_refusal
from swarm.kernel.eventlog import (
    AppendRequest,
    Delivery,
    EventLog,
    EventLogError,
    Message,
    NoResponders,
)
from swarm.kernel.follow import follow, wanted_events
from swarm.kernel.lifecycle import Service, Status, run_until_signalled
from swarm.kernel.settings import Settings, load
from swarm.kernel.signing import MeshClaim, mesh_signature_of
from swarm.kernel.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

SOURCE = "scheduler-autoscaler"
IDENTITY = "service:scheduler"
_CLAIM = MeshClaim(IDENTITY)


class AutoscalerSettings(BaseSettings):
    """`SWARM_AUTOSCALER_*`."""

    model_config = SettingsConfigDict(env_prefix="SWARM_AUTOSCALER_", extra="ignore", frozen=True)

    #: Seconds between two demand samples of an agent (and decisions); match the pods'
    #: SWARM_POD_METRICS_INTERVAL_S so each step sees a fresh sample.
    step_s: float = Field(default=5.0, gt=0, le=3600)
    #: A replica not heard of for this long no longer counts (as demand or for tasks).
    stale_after_s: float = Field(default=20.0, gt=0)
    #: A scale request not seen on the log after this long is decided again.
    pending_timeout_s: float = Field(default=15.0, gt=0)
    #: Run the task distributor.
    tasks: bool = True
    #: Tasks handed out at once, and how long one replica may take to answer one.
    max_inflight: int = Field(default=256, ge=1, le=65_536)
    task_timeout_s: float = Field(default=30.0, gt=0)
    #: Replicas tried per delivery before the task is put back, and how long it waits then.
    task_attempts: int = Field(default=3, ge=1, le=100)
    task_retry_s: float = Field(default=1.0, gt=0)
    #: The pods' mailbox bound (SWARM_POD_MAILBOX_SIZE), against which depth is measured.
    mailbox_size: int = Field(default=256, ge=1)
    reputation_weight: float = Field(default=0.3, ge=0, le=1)
    fetch_batch: int = Field(default=1000, ge=1)
    idle_s: float = Field(default=0.05, gt=0)


_WANTED = wanted_events(HANDLED)


class AutoscalerService(Service):
    name = "autoscaler"

    def __init__(
        self,
        settings: Settings,
        config: AutoscalerSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        principals: Roster | None = None,
    ) -> None:
        super().__init__(settings)
        self.config = c = config or AutoscalerSettings()
        #: The stack's principals: who may answer a task (None: any answer counts, as on a
        #: stack whose NATS admits anyone).
        self.principals = principals
        self.clock = clock
        self.autoscaler = Autoscaler(
            step_s=c.step_s, stale_after_s=c.stale_after_s, pending_timeout_s=c.pending_timeout_s
        )
        self.board = TaskBoard(
            mailbox_size=c.mailbox_size,
            reputation_weight=c.reputation_weight,
            # What the log says about the agents: their published trust, their quarantine.
            reputation=self.autoscaler.trust,
            quarantined=self.autoscaler.quarantined,
        )
        #: Set once the events are caught up: no decision is taken from a half-read log.
        self.live = asyncio.Event()
        #: Scale requests sent and refused (this run); tasks acknowledged and put back.
        self.scales_sent = 0
        self.scales_failed = 0
        self.tasks_done = 0
        self.tasks_retried = 0
        #: Answers refused: not from the pod that runs the replica asked.
        self.answers_refused = 0

    def set_reputation(self, scores: Mapping[str, float]) -> None:
        """Reputation per agent or replica id in [0, 1] (from the Observer/Hive)."""
        self.board.set_reputation(scores)

    async def serve(self) -> None:
        """Run every loop until stopped; tasks in flight are put back."""
        eventlog = await EventLog.connect(self.nats_url, self.settings, name=SOURCE)
        loops = [self._events, self._metrics, self._ticks]
        if self.config.tasks:
            loops.append(self._tasks)
        tasks = [asyncio.create_task(self._forever(fn, eventlog)) for fn in loops]
        log.info("autoscaler started", step_s=self.config.step_s, tasks=self.config.tasks)
        try:
            await self._stop.wait()
        finally:
            self.status = Status.STOPPING
            await cancel_and_wait(tasks)
            await eventlog.close()
            log.info(
                "autoscaler stopped",
                scales_sent=self.scales_sent,
                tasks_done=self.tasks_done,
            )

    async def _forever(
        self, loop: Callable[[EventLog], Coroutine[Any, Any, None]], eventlog: EventLog
    ) -> None:
        name = getattr(loop, "__name__", "loop")
        while not self._stop.is_set():
            try:
                await loop(eventlog)
            except (EventLogError, TimeoutError, OSError) as exc:
                log.warning(f"autoscaler {name} interrupted; again", error=str(exc) or repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.2)

    # -- the log ----------------------------------------------------------------------------------

    async def _events(self, eventlog: EventLog) -> None:
        await follow(
            eventlog,
            self.autoscaler,
            _WANTED,
            stop=self._stop,
            live=self.live,
            batch=self.config.fetch_batch,
            idle_s=self.config.idle_s,
            what="autoscaler view",
        )

    # -- metrics ----------------------------------------------------------------------------------

    async def _metrics(self, eventlog: EventLog) -> None:
        # From now on: a sample's age is judged by when it was folded, so old ones are no use.
        reader = await eventlog.reader(
            names.STREAM_METRICS,
            start_time=datetime.now(UTC),
            subjects=[names.metrics_wildcard(names.METRIC_AGENT)],
            batch=self.config.fetch_batch,
        )
        try:
            while not self._stop.is_set():
                for d in await reader.fetch(self.config.fetch_batch, timeout=0.5):
                    try:
                        self.autoscaler.metrics.observe(
                            json.loads(d.data), self.clock(), subject=d.subject
                        )
                    except (SampleError, ValueError) as exc:
                        log.warning("metrics sample skipped", subject=d.subject, error=str(exc))
        finally:
            with contextlib.suppress(EventLogError, OSError):
                await reader.close()

    # -- decisions --------------------------------------------------------------------------------

    async def _ticks(self, eventlog: EventLog) -> None:
        await self.live.wait()
        step = self.config.step_s
        next_at = self.clock()
        while not self._stop.is_set():
            next_at += step
            for request in self.autoscaler.tick(self.clock()):
                await self._send(eventlog, request)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - self.clock()))

    async def _send(self, eventlog: EventLog, request: ScaleRequest) -> None:
        d = request.decision
        payload = commands.ScaleAgent(
            namespace=request.namespace,
            name=request.name,
            replicas=d.replicas,
            autoscale=d,
        )
        envelope = command(payload, source=SOURCE, identity=IDENTITY)
        try:
            await eventlog.append_raw(AppendRequest.of(envelope))
        except (EventLogError, TimeoutError, OSError) as exc:
            self.scales_failed += 1
            log.warning("scale request not sent", agent_id=request.agent_id, error=str(exc))
            return
        self.scales_sent += 1
        log.info(
            "autoscale",
            agent=f"{request.namespace}/{request.name}",
            direction=d.direction,
            previous=d.previous,
            replicas=d.replicas,
            reason=d.reason,
        )

    # -- tasks ------------------------------------------------------------------------------------

    async def _tasks(self, eventlog: EventLog) -> None:
        c = self.config
        consumer = await eventlog.consumer(
            names.STREAM_TASKS,
            names.CONSUMER_TASK_DISTRIBUTOR,
            max_ack_pending=c.max_inflight,
            ack_wait=c.task_timeout_s * c.task_attempts + 5,
        )
        running: set[asyncio.Task[None]] = set()
        try:
            while not self._stop.is_set():
                if len(running) >= c.max_inflight:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                free = c.max_inflight - len(running)
                for d in await consumer.fetch(min(free, 256), timeout=0.5):
                    task = asyncio.create_task(self._hand_out(eventlog, d))
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            await cancel_and_wait(list(running))

    async def _hand_out(self, eventlog: EventLog, d: Delivery) -> None:
        c = self.config
        queue = names.task_queue_of(d.subject)
        if queue is None:
            await d.term()
            return
        tried: list[str] = []
        for _ in range(c.task_attempts):
            now = self.clock()
            loads = [
                load
                for load in self.autoscaler.metrics.replicas.values()
                if now - load.last.seen_at <= c.stale_after_s
            ]
            candidate = self.board.choose(queue, loads, exclude=tried)
            if candidate is None:
                break
            rid = candidate.replica_id
            tried.append(rid)
            self.board.sent(rid)
            try:
                reply = await eventlog.request(
                    names.mesh_replica_subject(rid),
                    d.data,
                    timeout=c.task_timeout_s,
                    claim=_CLAIM,  # a stack's pods take signed messages alone
                )
            except (NoResponders, TimeoutError):  # RequestTimeout included
                continue  # gone, or too slow: another replica may take it
            finally:
                self.board.answered(rid)
            refused = self._not_the_replicas(reply, candidate.agent_id, rid)
            if refused is not None:
                self.answers_refused += 1
                log.warning("task answer refused", replica=rid, reason=refused)
                continue  # someone else answered in its stead: the task is not done
            if (reply.headers or {}).get(names.HEADER_AGENT_ERROR):
                continue  # refused (mailbox full, not running): try the next best
            await self._forward(eventlog, d, reply)
            await d.ack()
            self.tasks_done += 1
            return
        self.tasks_retried += 1
        await d.nak(delay=c.task_retry_s)

    def _not_the_replicas(self, reply: Message, agent_id: str, replica_id: str) -> str | None:
        """Why `reply` is not replica `replica_id`'s (of agent `agent_id`) answer, or None: given
        the principals, it must be signed by the pod the log places the replica on, as that
        agent (a replica placed after the events read so far is refused; the task is tried
        again later)."""
        if self.principals is None:
            return None
        answer = mesh_signature_of(reply.subject, reply.data, reply.headers)
        if answer is None:
            return "the answer is not signed (this stack's pods sign what their agents answer)"
        if not answer.valid:
            return f"the answer's signature does not hold: {answer.problem}"
        principal = self.principals.get(answer.signer)
        signer = (principal.name, principal.role) if principal is not None else None
        where = self.autoscaler.placed.get(replica_id)
        placed = {replica_id: where[1]} if where is not None and where[0] == agent_id else {}
        claim = answer.claim
        agent = (agent_id, f"agent {agent_id}")
        return answer_refusal(signer, claim.identity, claim.replica, agent, placed)

    async def _forward(self, eventlog: EventLog, d: Delivery, reply: Message) -> None:
        to = d.headers.get(names.HEADER_TASK_REPLY)
        if not to:
            return
        with contextlib.suppress(EventLogError, OSError):
            await eventlog.publish(to, reply.data, headers=reply.headers or {})


async def main() -> None:
    from services.scheduler.config import SchedulerSettings

    principals = load(SchedulerSettings, "scheduler setting").principals()
    await run_until_signalled(
        AutoscalerService(
            load(Settings, "setting"),
            load(AutoscalerSettings, "autoscaler setting"),
            principals=principals,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())


__all__ = ["IDENTITY", "SOURCE", "AutoscalerService", "AutoscalerSettings", "Status", "main"]
