"""`cancel_and_wait`: tasks that lose a cancellation are cancelled again until they stop."""

from __future__ import annotations

import asyncio

import pytest

from swarm.kernel.tasks import cancel_and_wait, failure


async def _swallowing(times: int, cancels: list[int], seen: asyncio.Event | None = None) -> None:
    """Stands for a loop whose `wait_for` lost the cancellation: it goes on `times` times."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancels.append(1)
            if seen is not None:
                seen.set()
            if len(cancels) > times:
                raise


async def _failing() -> None:
    raise RuntimeError("boom")


async def test_a_task_that_swallows_cancellations_is_cancelled_until_it_stops() -> None:
    cancels: list[int] = []
    stubborn = asyncio.create_task(_swallowing(2, cancels))
    plain = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)  # both started
    await cancel_and_wait([stubborn, plain])
    assert stubborn.cancelled()
    assert plain.cancelled()
    assert len(cancels) == 3
    assert failure(stubborn) is None


async def test_outcomes_stay_on_the_tasks() -> None:
    failed = asyncio.create_task(_failing())
    done = asyncio.create_task(asyncio.sleep(0))
    await asyncio.wait([failed, done])
    await cancel_and_wait([failed, done])  # already done: nothing to cancel
    assert isinstance(failure(failed), RuntimeError)
    assert failure(done) is None


async def test_the_callers_own_cancellation_still_propagates() -> None:
    cancels: list[int] = []
    seen = asyncio.Event()
    stubborn = asyncio.create_task(_swallowing(1, cancels, seen))
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait([stubborn]))
    await seen.wait()  # the first cancellation reached the stubborn task, which swallowed it
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert not stubborn.done()
    stubborn.cancel()  # the second one ends it
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stubborn, 10)
