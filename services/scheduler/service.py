"""The scheduler process: follow SWARM_EVENTS, propose placements for replicas that wait.

Only the Hive writes placements; the scheduler sends `placement.propose` commands and reads their
outcomes back from the log, like kube-scheduler proposing bindings to the API server.

Position: none is stored. On start the view is rebuilt by replaying SWARM_EVENTS from the first
message with an ordered, ephemeral reader, and the same reader then follows the log. The view is
a projection that is cheap to fold, and everything else the scheduler needs to resume is on the
log too: a proposal's id carries the request it answers and its attempt number, so after a
restart the rejections already read give the same next ids and JetStream drops re-sent
duplicates. A durable position would need the view saved alongside it (position saved with the
effect), i.e. a snapshot store, which this baseline does not need; replay time grows with the
log, and a snapshot plus position is the upgrade when it matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg

from schemas import (
    REGISTRY,
    CommandRejected,
    DecodeError,
    Payload,
    command,
    commands,
    market,
    names,
)
from services.scheduler.autoscaler_service import AutoscalerService, AutoscalerSettings
from services.scheduler.catalog import policy_named
from services.scheduler.config import SchedulerSettings
from services.scheduler.market import market_rows
from services.scheduler.planner import Planner
from services.scheduler.policies import Policy
from services.scheduler.proposals import Proposal
from services.scheduler.view import HANDLED
from swarm.kernel.eventlog import AppendRequest, Delivery, EventLog, EventLogError
from swarm.kernel.settings import Settings

log = structlog.get_logger(__name__)

SOURCE = "scheduler"
IDENTITY = "service:scheduler"


def _wanted() -> frozenset[tuple[str, str]]:
    """(aggregate, event) of every event the planner reads, to skip the rest before decoding."""
    pairs: set[tuple[str, str]] = set()
    models: list[type[Payload]] = [*HANDLED, CommandRejected]
    for model in models:
        entry = REGISTRY.get(model.TYPE)
        if entry is not None and entry.aggregate and entry.event:
            pairs.add((entry.aggregate, entry.event))
    return frozenset(pairs)


_WANTED = _wanted()


class Status(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _GapError(Exception):
    """A message of the ordered feed went missing; read again from the view's position."""


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        config: SchedulerSettings | None = None,
        *,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.config = config or SchedulerSettings()
        chosen = policy or policy_named(self.config.policy, self.config.pricing())
        self.planner = Planner(
            chosen,
            retry_backoff=self.config.retry_backoff_s,
            max_backoff=self.config.max_backoff_s,
            # Preemption is part of the market; the baselines never move anyone.
            preemption=self.config.preemption and chosen.name == "market",
            recent=self.config.recent_clearings,
        )
        self.clock = clock
        self.status = Status.NEW
        #: Set once the view has caught up with the log; no proposal is sent before.
        self.live = asyncio.Event()
        #: Proposals sent, and rejections of them by rule (this run only).
        self.proposed = 0
        self.rejected: Counter[str] = Counter()
        #: Proposals JetStream dropped because their id was already on the log.
        self.duplicates = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Stop reading and proposing; safe before start and twice. Sent proposals stand."""
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
        log.info("scheduler started", policy=self.planner.policy.name)
        subscription = None
        try:
            subscription = await eventlog.nc.subscribe(
                names.QUERY_MARKET_STATE, queue=SOURCE, cb=self._answer_market
            )
            while not self._stop.is_set():
                try:
                    await self._follow(eventlog)
                except (_GapError, EventLogError, nats.errors.Error, TimeoutError, OSError) as exc:
                    log.warning(
                        "event feed interrupted; reading again",
                        error=str(exc) or type(exc).__name__,
                        applied_seq=self.planner.view.applied_seq,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), 0.2)
        finally:
            self.status = Status.STOPPING
            if subscription is not None:
                with contextlib.suppress(nats.errors.Error, OSError):
                    await subscription.unsubscribe()
            await eventlog.close()
            self.status = Status.STOPPED
            log.info("scheduler stopped", proposed=self.proposed, rejected=dict(self.rejected))

    def market_state(self, limit: int = 50) -> dict[str, Any]:
        """Offers with their posted prices and the latest clearings (`swarm market`)."""
        planner = self.planner
        recent = list(planner.recent)[-limit:] if limit > 0 else []
        return {
            "policy": planner.policy.name,
            "pricing": dataclasses.asdict(self.config.pricing()),
            "live": self.live.is_set(),
            "applied_seq": planner.view.applied_seq,
            "waiting": len(planner.view.waiting),
            "in_flight": len(planner.in_flight),
            "offers": market_rows(list(planner.offers().values()), self.config.pricing()),
            "clearings": recent,
        }

    async def _answer_market(self, msg: Msg) -> None:
        try:
            body = json.loads(msg.data or b"{}")
            limit = int(body.get("limit", 50)) if isinstance(body, dict) else 50
            answer = self.market_state(max(0, min(limit, 10_000)))
        except (ValueError, TypeError) as exc:
            answer = {"error": f"bad market query: {exc}"}
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.respond(json.dumps(answer).encode())

    async def _follow(self, eventlog: EventLog) -> None:
        batch = self.config.fetch_batch
        reader = await eventlog.reader(
            names.STREAM_EVENTS, start_seq=self.planner.view.applied_seq + 1, batch=batch
        )
        # An ack-less ordered reader numbers its deliveries 1, 2, 3...: a hole means a message
        # was lost on the way (e.g. a slow-consumer drop), and folding on would skew the view.
        expected = 1
        try:
            while not self._stop.is_set():
                deliveries = await reader.fetch(batch, timeout=self.config.idle_s)
                now = self.clock()
                for delivery in deliveries:
                    if delivery.consumer_seq != expected:
                        raise _GapError(
                            f"expected delivery {expected}, got {delivery.consumer_seq}"
                        )
                    expected += 1
                    self._apply(delivery, now)
                if not self.live.is_set():
                    # Proposals made from a half-rebuilt view would be refused for replicas that
                    # were placed further down the log.
                    if deliveries and deliveries[-1].num_pending > 0:
                        continue
                    if not deliveries and not await reader.caught_up():
                        continue
                    self.live.set()
                    log.info(
                        "view rebuilt from the log",
                        applied_seq=self.planner.view.applied_seq,
                        pods=len(self.planner.view.pods),
                        waiting=len(self.planner.view.waiting),
                    )
                if self.planner.wants_to_plan(now):
                    await self._propose(eventlog, now)
        finally:
            # The connection may be gone (that may be why we are here); the server drops an
            # idle ephemeral reader by itself.
            with contextlib.suppress(nats.errors.Error, OSError):
                await reader.close()

    def _apply(self, delivery: Delivery, now: float) -> None:
        parts = names.parse_event_subject(delivery.subject)
        if parts is None or (parts[0], parts[2]) not in _WANTED:
            self.planner.skip(delivery.stream_seq)
            return
        try:
            envelope = delivery.decode()
        except DecodeError as exc:
            log.warning("unreadable event skipped", seq=delivery.stream_seq, error=str(exc))
            self.planner.skip(delivery.stream_seq)
            return
        retry = self.planner.apply(envelope, delivery.stream_seq, now)
        if retry is not None and retry.proposal is not None:
            self.rejected[retry.rule or "unknown"] += 1
            log.info(
                "placement rejected",
                replica_id=retry.proposal.replica_id,
                pod_id=retry.proposal.pod_id,
                rule=retry.rule,
                reason=retry.reason,
                retry_in=None if retry.at is None else round(retry.at - now, 3),
            )

    async def _propose(self, eventlog: EventLog, now: float) -> None:
        plan = self.planner.plan(now, self.config.max_proposals, clock=time.time())
        if plan.unplaceable:
            # Each replica is reported in the one pass where it first fits nowhere; a big
            # backlog is summed up in one line rather than one per replica.
            first = plan.unplaceable[0]
            why = Counter(c.wait or "no_fit" for c in plan.cleared if c.choice is None)
            log.warning(
                "replicas cannot be placed now; they wait",
                count=len(plan.unplaceable),
                why=dict(why),
                replica_ids=[n.replica_id for n in plan.unplaceable[:5]],
                memory_mb=first.memory_mb,
                fuel_per_s=first.fuel_per_s,
            )
        if not plan.proposals:
            return
        policy = self.planner.policy.name
        causes = self.planner.view.causes
        requests = [
            AppendRequest.of(
                command(
                    _proposal_command(p, policy),
                    source=SOURCE,
                    identity=IDENTITY,
                    id=p.command_id,
                    causationid=causes.get(p.request_seq, (None, None))[0],
                    correlationid=causes.get(p.request_seq, (None, None))[1],
                )
            )
            for p in plan.proposals
        ]
        try:
            appended = await eventlog.append_batch(requests)
        except (EventLogError, nats.errors.Error, TimeoutError, OSError) as exc:
            self.planner.abandon(plan.proposals, now)
            log.warning("could not send proposals; retrying", count=len(requests), error=str(exc))
            return
        self.proposed += len(requests)
        duplicates = sum(a.duplicate for a in appended)
        if duplicates:
            # Sent before (by an earlier run, or before a failed send): the originals stand.
            self.duplicates += duplicates
            log.info("proposals already on the log were dropped as duplicates", count=duplicates)


def _proposal_command(p: Proposal, policy: str) -> Payload:
    if p.victims:
        return market.PreemptPlacement(
            agent_id=p.agent_id,
            replica_id=p.replica_id,
            pod_id=p.pod_id,
            victims=[market.Victim(agent_id=a, replica_id=r) for a, r in p.victims],
            policy=policy,
            reason=p.reason,
        )
    return commands.ProposePlacement(
        agent_id=p.agent_id,
        replica_id=p.replica_id,
        pod_id=p.pod_id,
        policy=policy,
        reason=p.reason,
    )


async def main() -> None:
    """The scheduler process: placement (the market) and the autoscaler with its task queues."""
    settings = Settings()
    scheduler = Scheduler(settings, SchedulerSettings())
    autoscaler = AutoscalerService(settings, AutoscalerSettings())

    def stop() -> None:
        scheduler.stop()
        autoscaler.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    await asyncio.gather(scheduler.run(), autoscaler.run())


__all__ = ["IDENTITY", "SOURCE", "Scheduler", "Status", "main"]
