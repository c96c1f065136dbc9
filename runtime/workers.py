"""The pod's wasm worker threads, shared out per agent so one agent cannot starve the others.

A sandbox call is CPU-bound and may hold its thread until its deadline (up to 60 s), so a plain
FIFO thread pool lets one agent with many replicas (or a flood of messages for it) take every
thread: its neighbours' calls wait behind it for as long as it keeps them busy (seen: an echo
agent timing out for 70 s beside 20 spinning replicas on 16 threads).

What this pool does instead, and why both parts:

- **A per-agent cap.** One agent (all its replicas on the pod, keyed by agent id) holds at most
  `per_agent` threads at once, by default half of them, rounded up
  (`SWARM_POD_WORKERS_PER_AGENT`). So a single misbehaving agent, however many replicas it has,
  always leaves the other half to everyone else, who then do not wait for a thread at all. The
  price: one agent alone on an idle pod uses at most that many threads (not work-conserving).
- **Fair share among the waiting.** When a thread frees up, it goes to the waiting agent that
  holds the fewest threads (ties: in turn), not to the oldest request.
  So with several misbehaving agents, which together can fill the pod despite the cap, a
  well-behaved agent waits at most until the first running call ends (at most one deadline),
  and is then served before any agent that already holds threads.

Guarantees: never more than `workers` calls run at once, nor more than `per_agent` for one
agent; a free thread is never left idle while an agent under its cap has a call waiting; a
caller that is cancelled while waiting takes no thread, and a call that is already running keeps
its thread until it returns (wasm cannot be stopped from outside; its deadline ends it), so the
count of busy threads is always true.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WorkerPool:
    """`workers` threads; `await pool.run(agent, fn, *args)` runs `fn(*args)` on one of them.

    Used from one event loop; `shutdown()` is safe twice and before any use.
    """

    def __init__(self, workers: int, per_agent: int, *, name: str = "swarm-worker") -> None:
        if workers < 1 or per_agent < 1:
            raise ValueError("a WorkerPool needs at least one worker, and one per agent")
        self.workers = workers
        self.per_agent = min(per_agent, workers)
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._busy = 0
        self._held: dict[str, int] = {}
        #: Agents with calls waiting, in the order they were last served (for ties).
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._closed = False

    @property
    def busy(self) -> int:
        """Threads running a call now."""
        return self._busy

    def held(self, agent: str) -> int:
        """Threads `agent` holds now."""
        return self._held.get(agent, 0)

    def waiting(self, agent: str) -> int:
        """Calls of `agent` waiting for a thread."""
        return len(self._waiting.get(agent, ()))

    async def run(self, agent: str, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on a worker thread once `agent` gets one; its result or exception."""
        loop = asyncio.get_running_loop()
        await self._acquire(agent, loop)
        try:
            job = self._executor.submit(fn, *args)
        except BaseException:
            self._release(agent)
            raise

        def done(_: concurrent.futures.Future[T]) -> None:
            # The thread is given back when the call ends, not when its caller stops waiting.
            # RuntimeError: the loop is closed, the pod is gone; nobody to give the thread to.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._release, agent)

        job.add_done_callback(done)
        return await asyncio.wrap_future(job, loop=loop)

    def shutdown(self) -> None:
        """Refuse new calls, drop the waiting ones; running calls end at their deadline."""
        self._closed = True
        waiting, self._waiting = self._waiting, OrderedDict()
        for queue in waiting.values():
            for waiter in queue:
                waiter.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _acquire(self, agent: str, loop: asyncio.AbstractEventLoop) -> None:
        if self._closed:
            raise RuntimeError("the worker pool is shut down")
        # Nobody under their cap waits while a thread is free (see _dispatch), so taking a free
        # thread here jumps no queue.
        if self._busy < self.workers and self.held(agent) < self.per_agent:
            self._take(agent)
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting.setdefault(agent, deque()).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(agent)  # granted as we were cancelled: pass the thread on
            else:
                self._forget(agent, waiter)
            raise

    def _take(self, agent: str) -> None:
        self._busy += 1
        self._held[agent] = self._held.get(agent, 0) + 1

    def _release(self, agent: str) -> None:
        self._busy -= 1
        held = self._held.get(agent, 0) - 1
        if held > 0:
            self._held[agent] = held
        else:
            self._held.pop(agent, None)
        self._dispatch()

    def _forget(self, agent: str, waiter: asyncio.Future[None]) -> None:
        queue = self._waiting.get(agent)
        if queue is None:
            return
        try:
            queue.remove(waiter)
        except ValueError:
            return
        if not queue:
            del self._waiting[agent]

    def _dispatch(self) -> None:
        while self._busy < self.workers:
            agent = self._next()
            if agent is None:
                return
            queue = self._waiting[agent]
            waiter = queue.popleft()
            if queue:
                self._waiting.move_to_end(agent)
            else:
                del self._waiting[agent]
            if waiter.done():  # cancelled, its task not yet told
                continue
            self._take(agent)
            waiter.set_result(None)

    def _next(self) -> str | None:
        """The waiting agent under its cap holding the fewest threads; ties: the first in
        `_waiting`, where an agent just served went to the back (round-robin)."""
        best: str | None = None
        best_held = self.per_agent
        for agent in self._waiting:
            held = self.held(agent)
            if held < best_held:
                best, best_held = agent, held
        return best
