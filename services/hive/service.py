"""A Hive replica: Raft member, query server, and (while leader) projector, command processor
and reconcile loop.

Leadership is polled, not pushed: pysyncobj's callbacks run on its thread and do not always fire
under load, while asking `is_leader()` every few milliseconds is cheap and always right. Losing
leadership cancels the leader's tasks; unacked commands go to the next leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

import structlog

from schemas import names
from services.hive.config import HiveSettings
from services.hive.feeder import Feeder
from services.hive.processor import CommandProcessor, NotCaughtUp
from services.hive.projector import Projector
from services.hive.queries import serve as serve_queries
from services.hive.raft import ReplicatedState
from services.hive.reconcile import Heartbeats, Reconciler
from swarm.kernel.eventlog import EventLog
from swarm.kernel.lifecycle import Service, run_until_signalled
from swarm.kernel.logs import configure_logging
from swarm.kernel.settings import Settings, load
from swarm.kernel.tasks import cancel_and_wait, failure

log = structlog.get_logger(__name__)

#: How long a replica that stopped leading lets its leader tasks end on their own (they poll
#: `still_leader` every few ms; a commit waits at most ~0.5 s) before cancelling them.
HAND_BACK_S = 2.0


class Hive(Service):
    name = "hive"

    def __init__(self, settings: Settings, hive: HiveSettings) -> None:
        super().__init__(settings)
        self.hive_settings = hive
        self.node = hive.node_id()
        self.raft: ReplicatedState | None = None
        self.processor: CommandProcessor | None = None
        self.leader_since: float | None = None
        self._seal = hive.seal_key()
        self._principals = hive.principals()

    def describe(self, *, digest: bool = False) -> dict[str, Any]:
        """This replica's view. The digest is opt-in: it renders the whole state, which takes
        long enough on a big state to slow folding if it were computed on every poll."""
        raft = self.raft
        if raft is None:
            return {"node": self.node, "ready": False}
        with raft.lock:
            applied = raft.hive.applied_seq
            failures = raft.hive.fold_failure_count
            recent = [
                {"seq": f.seq, "type": f.type, "reason": f.reason}
                for f in raft.hive.fold_failures[-5:]
            ]
        checksum = None
        if digest:
            # A whole-state rendering takes a while on a big state: pause folding, not Raft.
            applied, checksum = raft.read_quiet(lambda s: (s.applied_seq, s.digest()))
        return {
            "node": self.node,
            "ready": raft.is_ready(),
            "is_leader": raft.is_leader(),
            "leader": raft.leader(),
            "applied_seq": applied,
            "digest": checksum,
            "commands_handled": self.processor.handled if self.processor else 0,
            "commands_dead_lettered": self.processor.dead_lettered if self.processor else 0,
            # Log entries that could not be folded (the same on every replica): foreign writes
            # or faults worth a look, `swarm timeline verify` lists them all.
            "fold_failures": failures,
            "recent_fold_failures": recent,
            "seal_public_key": self._seal.public.text,
            # Why folding waits, when it does (bytes on the log that differ from the agreed).
            "fold_stalled": raft.stalled,
        }

    async def serve(self) -> None:
        eventlog = await EventLog.connect(self.nats_url, self.settings, name=self.node)
        raft = self.raft = ReplicatedState(self.hive_settings.raft())
        heartbeats = Heartbeats()
        subs = await serve_queries(eventlog, raft, self.node, self.describe, self._principals)
        subs.append(await heartbeats.subscribe(eventlog))
        # Every replica reads the log itself; Raft agrees on what to fold (raft.py).
        feeding = asyncio.Event()
        feeder = asyncio.create_task(
            Feeder(eventlog, raft.cache, lambda: raft.applied_seq).run(feeding), name="feeder"
        )
        log.info("hive replica started", node=self.node, raft=self.hive_settings.raft_self)
        try:
            while not self._stop.is_set():
                # A leader whose tasks ended (e.g. it could not catch up) leads again after a
                # short pause rather than spinning; a follower polls for leadership.
                pause = (
                    0.2
                    if raft.is_leader() and await self._lead(eventlog, raft, heartbeats)
                    else 0.02
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), pause)
        finally:
            feeding.set()
            await cancel_and_wait([feeder])
            for sub in subs:
                await sub.close()
            await eventlog.close()
            raft.destroy()

    async def _lead(
        self, eventlog: EventLog, raft: ReplicatedState, heartbeats: Heartbeats
    ) -> bool:
        """Lead until leadership is lost or a leader task ends; True when a task ended early."""
        self.leader_since = time.monotonic()
        log.info("leading", node=self.node, applied_seq=raft.applied_seq)

        def still_leader() -> bool:
            return raft.is_leader() and not self._stop.is_set()

        processor = self.processor = CommandProcessor(
            eventlog,
            raft,
            source=f"hive/{self.node}",
            seal=self._seal,
            principals=self._principals,
            ids=self.hive_settings.id_key("commands"),
            node=self.node,
            term=raft.term,
        )
        projector = Projector(eventlog, raft)
        reconciler = Reconciler(
            eventlog,
            heartbeats,
            lambda: processor.working,
            ids=self.hive_settings.id_key("reconcile"),
        )
        tasks = [
            asyncio.create_task(projector.run(still_leader), name="projector"),
            asyncio.create_task(processor.run(still_leader), name="commands"),
            asyncio.create_task(reconciler.run(still_leader), name="reconcile"),
        ]
        failed = False
        try:
            # Polled: pysyncobj offers no awaitable for "leadership lost".
            while still_leader() and not any(t.done() for t in tasks):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        finally:
            try:
                # Leadership lost (or the replica stopping): each task sees it within a poll and
                # ends on its own, the command processor handing the commands it fetched back
                # to the stream. Cancelled, that hand-back is lost, and those commands wait out
                # their ack_wait (15 s) before the next leader gets them: with leadership moving
                # every few seconds on a starved machine, that stalled every command in flight.
                # (A task that failed while this replica still leads: the others are stopped
                # at once, as they would run on.)
                if not still_leader():
                    await asyncio.wait(tasks, timeout=HAND_BACK_S)
            finally:
                # Cancelled until done: a lost cancellation (swarm.kernel.tasks) left a
                # replica's leader loop waiting for a task that ran on.
                await cancel_and_wait(tasks)
            for task in tasks:
                error = failure(task)
                if isinstance(error, NotCaughtUp):
                    failed = True
                    log.warning("leader could not catch up", error=str(error))
                elif error is not None:
                    failed = True
                    log.error("leader task failed", task=task.get_name(), exc_info=error)
            log.info("no longer leading", node=self.node)
        return failed


async def main() -> None:
    # Raft's tick thread must answer within its election timeout while the fold thread and the
    # event loop keep the GIL busy: hand the GIL over every millisecond, not every five.
    sys.setswitchinterval(0.001)
    settings = load(Settings, "setting")
    configure_logging(settings.log_level, settings.log_format)
    await run_until_signalled(Hive(settings, load(HiveSettings, "hive setting")))


__all__ = ["Hive", "main", "names"]
