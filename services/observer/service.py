"""The Observer process: the stream app of `stream.py` plus the behaviour vectors it stores.

It runs on swarm.kernel.streaming: two processors (durable consumers `observer_metrics` on
SWARM_METRICS and `observer_logs` on SWARM_LOGS) feed the pure core, whose per-agent and
per-namespace state lives in the app's tables, kept in the changelog stream
SWARM_CHANGELOG_OBSERVER. On start the tables are recovered from the changelog before any event
is read; each batch's changed keys, then the processor's position, are committed before the
batch is acked, and a batch interrupted by a crash is rolled back and runs again on the state it
first saw. So a killed observer resumes without losing or double-counting a window, and the
findings (`anomaly.report` commands, appended before the position with ids derived from agent,
window and kind) of a replayed batch are dropped by JetStream as duplicates. A metrics message or
log line that is not what pods publish is dead-lettered with the reason (SWARM_DEADLETTER).

Behaviour vectors go to Postgres from here, outside the handlers (which must not do I/O), every
`SWARM_OBSERVER_FLUSH_S`; the writes are idempotent (unique per agent and window), so a replayed
window is not stored twice. They are a view, not the record: vectors of windows committed just
before a SIGKILL and not yet flushed are lost.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from services.observer.analysis import Observatory
from services.observer.behaviour import BehaviourRow, BehaviourStore
from services.observer.config import ObserverSettings
from services.observer.stream import IDENTITY, SOURCE, build_app
from swarm.kernel.eventlog import EventLog
from swarm.kernel.lifecycle import Service, Status, run_until_signalled
from swarm.kernel.logs import configure_logging
from swarm.kernel.settings import Settings, load
from swarm.kernel.streaming import StreamApp

log = structlog.get_logger(__name__)


class Observer(Service):
    name = "observer"

    def __init__(self, settings: Settings, config: ObserverSettings | None = None) -> None:
        super().__init__(settings)
        self.config = config or ObserverSettings()
        self.core = Observatory(
            self.config.detector(), self.config.window_s, machine_config=self.config.machine()
        )
        #: Set once the tables are recovered and events are being read.
        self.live = asyncio.Event()
        self.app: StreamApp | None = None
        self._rows: list[BehaviourRow] = []
        self._store: BehaviourStore | None = None

    @property
    def reports_sent(self) -> int:
        """Findings appended to the command log by this process (a replay's repeats included)."""
        return 0 if self.app is None else self.app.stats.outputs

    def on_stop(self) -> None:
        """Stop reading; the batch in progress is committed."""
        if self.app is not None:
            self.app.stop()

    async def serve(self) -> None:
        try:
            # The streams the processors read (and the command stream) exist before they bind.
            eventlog = await EventLog.connect(self.nats_url, self.settings, name=SOURCE)
            await eventlog.close()
            store = self.config.store_behaviour and self.settings.database_url
            if store:
                self._store = BehaviourStore(self.settings.database_url or "")
            self.app = build_app(
                self.settings, self.config, self.core, self._rows.extend if store else None
            )
            if self._stop.is_set():
                self.app.stop()
            done = asyncio.Event()
            flusher = asyncio.create_task(self._flush_until(done, self.config.flush_s))
            try:
                await self.app.start()
                self.live.set()
                log.info("observer started", recovered_keys=self.app.stats.recovered_keys)
                await self.app.wait()
            finally:
                # Not cancelled: a store in progress (in a thread) finishes, then the last rows go.
                done.set()
                await flusher
        finally:
            self.status = Status.STOPPING
            if self._store is not None:
                self._store.close()
            log.info("observer stopped", reports=self.reports_sent)

    async def _flush_until(self, done: asyncio.Event, seconds: float) -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), seconds)
            await self._flush()

    async def _flush(self) -> None:
        if not self._rows or self._store is None:
            return
        rows = self._rows[:]
        del self._rows[:]  # the app appends to this very list
        try:
            await asyncio.to_thread(self._store.store, rows)
        except Exception as exc:  # lossy by design: a vector is a view, never the record
            log.warning("behaviour vectors not stored", count=len(rows), error=str(exc))


async def main() -> None:
    settings = load(Settings, "setting")
    configure_logging(settings.log_level, settings.log_format)
    await run_until_signalled(Observer(settings, load(ObserverSettings, "observer setting")))


__all__ = ["IDENTITY", "SOURCE", "Observer", "Status", "main"]
