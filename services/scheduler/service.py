"""The scheduler process: follow SWARM_EVENTS, propose placements for replicas that wait.

Only the Hive writes placements; the scheduler sends `placement.propose` commands and reads their
outcomes back from the log, like kube-scheduler proposing bindings to the API server.

State: the scheduler's intake is a stream app on `swarm.kernel.streaming` (faust over JetStream,
see `intake.py`): one processor folds SWARM_EVENTS into the tables `pods`, `agents` and
`replicas`, which are written to their changelog with the processor's position before each
batch is acked. On start the tables are recovered from the changelog (exactly one application of
every event up to the position, whatever was killed when) and the planner's view is rebuilt
from them; only the events after the position are read. No proposal is sent before the view has
caught up with the log as it was at start ("live"): one made from an older view would be refused
for replicas placed further down the log.

Proposals come from a planning pass that runs after events were folded (and when a retry is
due), not from the handler: a proposal's id carries the request it answers and its attempt
number (the rejections read, kept in the tables), so after a restart the same waiting replicas
get the same ids and JetStream drops the re-sent duplicates; the Hive re-checks every proposal
against its own accounting and stays the final guard against over-commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog

from schemas import Payload, command, commands, market, names
from services.scheduler.autoscaler_service import AutoscalerService, AutoscalerSettings
from services.scheduler.catalog import policy_named
from services.scheduler.config import SchedulerSettings
from services.scheduler.intake import Intake
from services.scheduler.market import market_rows
from services.scheduler.planner import Planner, Retry
from services.scheduler.policies import Policy
from services.scheduler.proposals import Proposal
from swarm.domain.policy import Reader
from swarm.domain.state import Grant
from swarm.kernel.eventlog import AppendRequest, EventLog, EventLogError, Message
from swarm.kernel.ids import IdKey
from swarm.kernel.lifecycle import Service, Status, run_until_signalled
from swarm.kernel.logs import configure_logging
from swarm.kernel.queryguard import QueryGuard, forbidden, unauthenticated
from swarm.kernel.seal import verifier as seal_verifier
from swarm.kernel.settings import Settings, load
from swarm.kernel.streaming import MAX_BATCH, StreamApp

log = structlog.get_logger(__name__)

SOURCE = "scheduler"
IDENTITY = "service:scheduler"


#: How long a user's market query waits for the Hive's grants.
_GRANTS_TIMEOUT_S = 2.0
#: Pause before a stopped stream app is started again, doubling up to the maximum.
_RESTART_PAUSE = 0.2
_MAX_RESTART_PAUSE = 5.0


class Scheduler(Service):
    name = "scheduler"

    def __init__(
        self,
        settings: Settings,
        config: SchedulerSettings | None = None,
        *,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(settings)
        self.config = config or SchedulerSettings()
        chosen = policy or policy_named(self.config.policy, self.config.pricing())
        self.planner = Planner(
            chosen,
            retry_backoff=self.config.retry_backoff_s,
            max_backoff=self.config.max_backoff_s,
            # Preemption is part of the market; the baselines never move anyone.
            preemption=self.config.preemption and chosen.name == "market",
            recent=self.config.recent_clearings,
            ids=IdKey.of(settings.command_id_secret, "scheduler"),
        )
        self.clock = clock
        #: Set once the view has caught up with the log; no proposal is sent before.
        self.live = asyncio.Event()
        #: Proposals sent, and rejections of them by rule (this run only).
        self.proposed = 0
        self.rejected: Counter[str] = Counter()
        #: Proposals JetStream dropped because their id was already on the log.
        self.duplicates = 0
        #: Folds the log into the planner through the stream app's tables.
        self.intake = Intake(
            self.planner,
            clock=clock,
            on_retry=self._on_retry,
            seal=seal_verifier(settings.hive_public_key),
        )
        #: The running stream app (None between incarnations).
        self.app: StreamApp | None = None
        principals = self.config.principals()
        #: Who asks the market (None: anyone is answered, as on a stack without principals).
        self._guard = QueryGuard(principals) if principals is not None else None

    async def serve(self) -> None:
        """Read and propose until stopped; proposals sent stand."""
        eventlog = await EventLog.connect(self.nats_url, self.settings, name=SOURCE)
        log.info("scheduler started", policy=self.planner.policy.name)
        subscription = None
        pause = _RESTART_PAUSE
        try:
            subscription = await eventlog.subscribe(
                names.QUERY_MARKET_STATE,
                functools.partial(self._answer_market, eventlog),
                queue=SOURCE,
            )
            while not self._stop.is_set():
                try:
                    await self._run_app(eventlog)
                    pause = _RESTART_PAUSE
                except Exception as exc:
                    # A failed commit or a lost connection stops the stream app; a new one
                    # recovers the tables from the changelog and reads on from their position.
                    log.warning(
                        "event intake stopped; recovering from the tables",
                        error=str(exc) or type(exc).__name__,
                        applied_seq=self.planner.view.applied_seq,
                        retry_in=pause,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), pause)
                    pause = min(pause * 2, _MAX_RESTART_PAUSE)
        finally:
            self.status = Status.STOPPING
            if subscription is not None:
                await subscription.close()
            await eventlog.close()
            log.info("scheduler stopped", proposed=self.proposed, rejected=dict(self.rejected))

    async def _run_app(self, eventlog: EventLog) -> None:
        """One incarnation of the stream app: recover, fold events, plan after each change."""
        app = self.intake.app(self.settings, batch=min(self.config.fetch_batch, MAX_BATCH))
        # Where the log ends now: proposals wait until the view has folded up to here.
        end = await eventlog.last_sequence(names.STREAM_EVENTS)
        self.live.clear()
        await app.start()
        self.app = app
        self.intake.sync(app)
        log.info(
            "tables recovered",
            position=app.position(names.SCHEDULER_PROCESSOR),
            keys=app.stats.recovered_keys,
            rolled_back=app.stats.rolled_back_keys,
            pods=len(self.planner.view.pods),
            waiting=len(self.planner.view.waiting),
        )
        waiter = asyncio.create_task(app.wait())
        stopping = asyncio.create_task(self._stop.wait())
        changed = self.intake.changed
        try:
            while not waiter.done() and not self._stop.is_set():
                woken = asyncio.create_task(changed.wait())
                await asyncio.wait(
                    {woken, waiter, stopping},
                    timeout=self.config.idle_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                woken.cancel()
                changed.clear()
                now = self.clock()
                if not self.live.is_set():
                    # The position also moves past events the app dead-lettered, which the
                    # view never sees.
                    reached = max(
                        self.planner.view.applied_seq, app.position(names.SCHEDULER_PROCESSOR)
                    )
                    if reached < end:
                        continue
                    self.live.set()
                    log.info(
                        "view caught up with the log",
                        applied_seq=self.planner.view.applied_seq,
                        pods=len(self.planner.view.pods),
                        waiting=len(self.planner.view.waiting),
                    )
                if self.planner.wants_to_plan(now):
                    await self._propose(eventlog, now)
        finally:
            stopping.cancel()
            app.stop()
            self.app = None
            # Re-raises what stopped the app (a failed commit, NATS gone), if anything did.
            await waiter

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

    async def _answer_market(self, eventlog: EventLog, msg: Message) -> None:
        answer = await self._refusal(eventlog, msg)
        if answer is None:
            try:
                body = json.loads(msg.data or b"{}")
                limit = int(body.get("limit", 50)) if isinstance(body, dict) else 50
                answer = self.market_state(max(0, min(limit, 10_000)))
            except (ValueError, TypeError) as exc:
                answer = {"error": f"bad market query: {exc}"}
        with contextlib.suppress(EventLogError, OSError):
            await eventlog.respond(msg, json.dumps(answer).encode())

    async def _refusal(self, eventlog: EventLog, msg: Message) -> dict[str, Any] | None:
        """Why a market query is answered nothing; None when its asker may read the market.

        With principals, it is answered as its signer's (`swarm.kernel.queryguard`), and the
        market spans every namespace: a user reads it with a role in every one, by the grants
        the Hive holds (asked for each user's query; the scheduler folds no grants)."""
        if self._guard is None:
            return None
        asker = self._guard.asker(msg)
        if isinstance(asker, str):
            return unauthenticated(asker)
        reader = Reader.of(asker.role, asker.name)
        if reader.user is None:
            return None
        try:
            grants = await _grants(eventlog)
        except (EventLogError, ValueError) as exc:
            return {
                "error": f"the market is not shown to user {reader.user} now: its roles are "
                f"not known (the Hive's grants: {exc})",
                "code": "unavailable",
            }
        refused = reader.refusal(grants, None, "read the market")
        return None if refused is None else forbidden(refused)

    def _on_retry(self, retry: Retry) -> None:
        if retry.proposal is None:
            return
        self.rejected[retry.rule or "unknown"] += 1
        log.info(
            "placement rejected",
            replica_id=retry.proposal.replica_id,
            pod_id=retry.proposal.pod_id,
            rule=retry.rule,
            reason=retry.reason,
            retry_in=None if retry.at is None else round(retry.at - self.clock(), 3),
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
        except (EventLogError, TimeoutError, OSError) as exc:
            self.planner.abandon(plan.proposals, now)
            log.warning("could not send proposals; retrying", count=len(requests), error=str(exc))
            return
        self.proposed += len(requests)
        duplicates = sum(a.duplicate for a in appended)
        if duplicates:
            # Sent before (by an earlier run, or before a failed send): the originals stand.
            self.duplicates += duplicates
            log.info("proposals already on the log were dropped as duplicates", count=duplicates)


async def _grants(eventlog: EventLog) -> list[Grant]:
    """Who holds which role where, as the Hive answers it to the scheduler (a service reads
    every grant)."""
    from schemas.views import AccessAnswer

    reply = await eventlog.request(names.QUERY_ACCESS_LIST, b"{}", timeout=_GRANTS_TIMEOUT_S)
    answer = json.loads(reply.data)
    if isinstance(answer, dict) and "error" in answer:
        raise ValueError(str(answer["error"]))
    views = AccessAnswer.model_validate(answer).grants
    return [Grant(g.user, g.namespace, g.role) for g in views]


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
    settings = load(Settings, "setting")
    configure_logging(settings.log_level, settings.log_format)
    scheduler = load(SchedulerSettings, "scheduler setting")
    await run_until_signalled(
        Scheduler(settings, scheduler),
        AutoscalerService(
            settings,
            load(AutoscalerSettings, "autoscaler setting"),
            # Who may answer a task: the stack's pods, each for the replicas it reports.
            principals=scheduler.principals(),
        ),
    )


__all__ = ["IDENTITY", "SOURCE", "Scheduler", "Status", "main"]
