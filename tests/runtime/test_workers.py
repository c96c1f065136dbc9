"""The pod's worker pool (runtime/workers.py): a cap per agent and fair share, on real threads."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator

import pytest

from runtime.workers import WorkerPool
from tests.helpers.waiting import true, wait_until

pytestmark = pytest.mark.timeout(30)


class Gate:
    """Calls that block on a thread until the test opens them, recording the order they began."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def call(self, name: str) -> Callable[[], str]:
        event = self._events.setdefault(name, threading.Event())

        def blocked() -> str:
            with self._lock:
                self.started.append(name)
            if not event.wait(20):
                raise TimeoutError(f"{name} was never released")
            return name

        return blocked

    def open(self, *names: str) -> None:
        for name in names:
            self._events.setdefault(name, threading.Event()).set()

    def open_all(self) -> None:
        for event in self._events.values():
            event.set()


@contextlib.contextmanager
def gated_pool(threads: int, per_agent: int) -> Iterator[tuple[WorkerPool, Gate]]:
    """A pool of `threads` threads (at most `per_agent` for one agent) and a gate for its calls;
    at the end, whatever happened, every call is let go and the pool shut down."""
    pool, gate = WorkerPool(threads, per_agent), Gate()
    try:
        yield pool, gate
    finally:
        gate.open_all()
        pool.shutdown()


async def holds(pool: WorkerPool, agent: str, threads: int, waiting: int = 0) -> None:
    async def check() -> bool:
        return pool.held(agent) == threads and pool.waiting(agent) == waiting

    await wait_until(check, 30, f"{agent} holding {threads} threads, {waiting} waiting")


async def test_results_and_exceptions_come_back() -> None:
    pool = WorkerPool(2, 1)
    try:
        assert await pool.run("a", lambda x: x * 2, 21) == 42
        with pytest.raises(ZeroDivisionError):
            await pool.run("a", lambda: 1 / 0)
        assert pool.busy == 0
    finally:
        pool.shutdown()


async def test_one_agent_never_holds_more_than_its_cap_and_others_get_a_thread_at_once() -> None:
    with gated_pool(4, 2) as (pool, gate):
        spinning = [asyncio.create_task(pool.run("spin", gate.call(f"s{i}"))) for i in range(5)]
        await holds(pool, "spin", 2, waiting=3)
        # The neighbour is served while the spinner's calls are still blocked and waiting.
        assert await asyncio.wait_for(pool.run("echo", lambda: "hi"), 5) == "hi"
        assert pool.held("spin") == 2
        gate.open_all()
        assert sorted(await asyncio.gather(*spinning)) == [f"s{i}" for i in range(5)]
        assert pool.busy == 0


async def test_a_freed_thread_goes_to_the_waiting_agent_that_holds_the_fewest() -> None:
    with gated_pool(2, 2) as (pool, gate):
        hog = [asyncio.create_task(pool.run("hog", gate.call(f"h{i}"))) for i in range(4)]
        await holds(pool, "hog", 2, waiting=2)
        other = asyncio.create_task(pool.run("other", gate.call("o")))
        await wait_until(lambda: true(pool.waiting("other") == 1), 30, "other waiting")

        gate.open("h0")  # the hog's queued calls came first; the freed thread is other's anyway
        await wait_until(lambda: true(len(gate.started) == 3), 30, "a third call running")
        assert pool.held("other") == 1
        assert set(gate.started[:2]) == {"h0", "h1"}
        assert gate.started[2] == "o"  # not h2, although it waited longer
        assert pool.held("hog") == 1
        gate.open_all()
        await asyncio.gather(*hog, other)


async def test_a_caller_cancelled_while_waiting_takes_no_thread() -> None:
    with gated_pool(1, 1) as (pool, gate):
        first = asyncio.create_task(pool.run("a", gate.call("a")))
        await holds(pool, "a", 1)
        waiting = asyncio.create_task(pool.run("b", gate.call("b")))
        await wait_until(lambda: true(pool.waiting("b") == 1), 30, "b waiting")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert pool.waiting("b") == 0
        gate.open("a")
        await first
        assert pool.busy == 0
        assert "b" not in gate.started
        assert await pool.run("c", lambda: "c") == "c"


async def test_a_running_call_keeps_its_thread_after_its_caller_is_cancelled() -> None:
    """wasm cannot be stopped from outside: the thread is busy until the call returns."""
    with gated_pool(1, 1) as (pool, gate):
        running = asyncio.create_task(pool.run("a", gate.call("a")))
        await holds(pool, "a", 1)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert pool.busy == 1
        later = asyncio.create_task(pool.run("b", lambda: "b"))
        await asyncio.sleep(0.05)
        assert not later.done()  # still no free thread
        gate.open("a")
        assert await asyncio.wait_for(later, 5) == "b"
        assert pool.busy == 0


async def test_shutdown_drops_waiting_calls_and_refuses_new_ones() -> None:
    pool, gate = WorkerPool(1, 1), Gate()
    running = asyncio.create_task(pool.run("a", gate.call("a")))
    await holds(pool, "a", 1)
    waiting = asyncio.create_task(pool.run("b", gate.call("b")))
    await wait_until(lambda: true(pool.waiting("b") == 1), 30, "b waiting")
    pool.shutdown()
    pool.shutdown()  # safe twice
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(RuntimeError, match="shut down"):
        await pool.run("c", lambda: None)
    gate.open_all()
    assert await running == "a"  # a running call is not interrupted
