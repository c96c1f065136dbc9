"""The pod's lease: heartbeats and liveness answers sent from a thread the event loop cannot starve.

Measured: while another workload loaded the machine (load average up to 180), a pod whose event
loop sent its heartbeats went 10 s without one and the Hive declared it lost four times, moving
its agents away from a pod that was busy, not gone. So the lease is kept by a thread of its own
with its own NATS connection (nats-py on an event loop of that thread): however busy the pod's
loop is (many agents, CPU-bound code, a callback holding the GIL between switches), this thread
gets the GIL every `sys.getswitchinterval()` (5 ms) and beats. It also answers the Hive's
liveness probe (`names.probe_subject`), which the Hive sends before it declares a pod lost.

The answer is a tiny JSON object, `{"pod_id": ..., "loop_lag_s": ...}`: how late the pod's own
loop tick is (`LoopClock`), i.e. how starved the pod is, for the Hive's logs.

Guarantees:
* `start()` returns at once; the thread connects (retrying until closed) and beats every
  `interval_s`; `wait_ready()` waits until it answers probes (the pod registers after it).
* `close()` stops beating and answering, closes the connection and joins the thread; it is safe
  before `start()` and twice.
* The thread is a daemon: when the process dies, heartbeats and probe answers die with it, so
  the Hive declares the pod lost as soon as its lease runs out.
* Busy is not wedged: a loop that has not ticked for `stall_s` does no work at all, so the thread
  falls silent (no heartbeats, no answers) until the loop ticks again; the Hive then moves the
  agents to a pod that runs them, and the pod registers again when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from schemas import names
from swarm.kernel.connection import CannotConnect, connect_nats
from swarm.kernel.eventlog import EventLog, EventLogError, Message

log = structlog.get_logger(__name__)

#: How long one connection attempt, and closing the connection, may take.
_CONNECT_TIMEOUT_S = 2.0
#: Pause between connection attempts while NATS cannot be reached.
_RETRY_S = 0.5


class LoopClock:
    """How late an event loop is: `run()` ticks on it every `tick_s`; any thread reads `lag()`.

    A float written by one thread and read by another is atomic under the GIL, so no lock."""

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self._last = time.monotonic()
        self._worst = 0.0

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            self._worst = max(self._worst, now - self._last - self.tick_s)
            self._last = now
            await asyncio.sleep(self.tick_s)

    def lag(self) -> float:
        """Seconds the loop's next tick is overdue now (0 when it is on time)."""
        return max(0.0, time.monotonic() - self._last - self.tick_s)

    def worst(self) -> float:
        """The longest lag since the last call (or since the start), then forget it."""
        worst, self._worst = max(self._worst, self.lag()), 0.0
        return max(0.0, worst)


class Heartbeat:
    """Beats on `names.heartbeat_subject(pod_id)` and answers `names.probe_subject(pod_id)`."""

    def __init__(
        self,
        url: str,
        pod_id: str,
        *,
        interval_s: float,
        lag: Callable[[], float],
        stall_s: float,
        credentials: Path | None = None,
    ) -> None:
        self.url = url
        #: The pod's nkey seed (its settings'); None: `$SWARM_NATS_CREDENTIALS` (`connect_nats`).
        self.credentials = credentials
        self.pod_id = pod_id
        self.interval_s = interval_s
        self.stall_s = stall_s
        self._lag = lag
        #: Heartbeats published and probes answered (read by tests and metrics).
        self.beats = 0
        self.answers = 0
        #: Set once the thread is connected and the server has its probe subscription: from
        #: then on the pod answers the Hive's liveness probe (`wait_ready`).
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(
            target=self._thread_main, name=f"pod-{pod_id}-heartbeat", daemon=True
        )

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread; a second call, or one after `close()`, does nothing."""
        with self._lock:
            if self._closing or self._thread.ident is not None:
                return
            self._thread.start()

    async def wait_ready(self, timeout: float) -> bool:
        """Wait (off the event loop) until the thread answers probes; False if `timeout` passed.

        The pod registers only then: a Hive that learns of a pod probes it as soon as its lease
        runs out, and a pod whose thread was still connecting (seconds, on a loaded machine)
        had nobody listening on its probe subject and was declared lost at once."""
        return await asyncio.to_thread(self.ready.wait, timeout)

    async def close(self, timeout: float = 10.0) -> None:
        """Stop beating and answering, close the connection, join the thread."""
        self._request_stop()
        if self._thread.ident is not None:
            # Joined off the event loop: closing the connection takes a round trip.
            await asyncio.to_thread(self._thread.join, timeout)
            if self._thread.is_alive():
                log.warning("heartbeat thread did not stop in time", pod_id=self.pod_id)

    def _request_stop(self) -> None:
        with self._lock:
            self._closing = True
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            # Cancelling only hurries it: Python 3.11's wait_for can swallow a cancellation
            # that meets a finishing connection attempt, so every loop also checks `_closing`.
            # The loop may have finished already: then there is nothing left to stop.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)

    # -- on the heartbeat thread ------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception:  # never silent: a pod without heartbeats is declared lost
            log.exception("heartbeat thread failed", pod_id=self.pod_id)

    async def _serve(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        conn: EventLog | None = None
        try:
            conn = await self._connect()
            if conn is None:
                return
            await conn.subscribe(
                names.probe_subject(self.pod_id), functools.partial(self._on_probe, conn)
            )
            await conn.flush()
            self.ready.set()
            await self._beat(conn)
        except asyncio.CancelledError:
            pass  # close(): what follows closes the connection
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), _CONNECT_TIMEOUT_S)

    async def _connect(self) -> EventLog | None:
        """A connection, or None once closing."""

        async def on_error(exc: Exception) -> None:
            log.debug("heartbeat connection error", pod_id=self.pod_id, error=str(exc))

        while not self._closing:
            try:
                # Bounded by itself (no wait_for): see swarm.kernel.connection for why a
                # cancelled first connection could otherwise retry forever.
                nc = await connect_nats(
                    self.url,
                    name=f"pod-{self.pod_id}-heartbeat",
                    timeout=_CONNECT_TIMEOUT_S,
                    on_error=on_error,
                    credentials=self.credentials,
                )
                return EventLog(nc, timeout=_CONNECT_TIMEOUT_S)
            except CannotConnect as exc:
                log.warning("heartbeat cannot reach NATS", pod_id=self.pod_id, error=str(exc))
                await asyncio.sleep(_RETRY_S)
        return None

    async def _beat(self, conn: EventLog) -> None:
        subject = names.heartbeat_subject(self.pod_id)
        stalled = False
        while not self._closing:
            lag = self._lag()
            if lag > self.stall_s:
                if not stalled:
                    log.error(
                        "event loop stalled: no heartbeats until it runs again",
                        pod_id=self.pod_id,
                        loop_lag_s=round(lag, 3),
                    )
                stalled = True
            else:
                if stalled:
                    log.warning("event loop runs again; heartbeats resume", pod_id=self.pod_id)
                stalled = False
                with contextlib.suppress(EventLogError, OSError):
                    await conn.publish(subject)
                    self.beats += 1
            await asyncio.sleep(self.interval_s)

    async def _on_probe(self, conn: EventLog, msg: Message) -> None:
        lag = self._lag()
        if lag > self.stall_s or not msg.reply:
            return
        body = json.dumps({"pod_id": self.pod_id, "loop_lag_s": round(lag, 3)}).encode()
        with contextlib.suppress(EventLogError, OSError):
            await conn.respond(msg, body)
            self.answers += 1


__all__ = ["Heartbeat", "LoopClock"]
