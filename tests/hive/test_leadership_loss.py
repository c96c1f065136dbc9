"""A leader that loses leadership while it waits for the agreed state stops waiting at once.

A leader cut off from its peers cannot catch up until its link is back; had it waited out the
catch-up timeout (15 s) it would have held the commands it fetched that long, out of the next
leader's reach (tests/faults/test_partition.py is the whole story with real processes).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from services.hive.processor import CommandProcessor, LeadershipLost, NotCaughtUp
from services.hive.raft import ReplicatedState
from swarm.kernel.eventlog import EventLog
from swarm.kernel.ids import IdKey
from swarm.kernel.seal import SealKey

pytestmark = pytest.mark.timeout(30)


class CutOffRaft:
    """The agreed state of a replica that hears from nobody: it never advances."""

    applied_seq = 3

    def copy_state(self) -> Any:
        raise AssertionError("a replica that never caught up has no state to copy")


def processor(catch_up_timeout: float) -> CommandProcessor:
    return CommandProcessor(
        cast(EventLog, None),  # resync(at_least=…) reads nothing from the log
        cast(ReplicatedState, CutOffRaft()),
        source="hive/test",
        seal=SealKey.from_secret("test-secret"),
        ids=IdKey.from_secret("test-secret", "commands"),
        catch_up_timeout=catch_up_timeout,
    )


async def test_losing_leadership_ends_the_wait_for_the_agreed_state() -> None:
    proc = processor(catch_up_timeout=60.0)
    leading = True
    proc._still_leader = lambda: leading
    waiting = asyncio.create_task(proc.resync(at_least=10))
    await asyncio.sleep(0.05)  # it polls the agreed state meanwhile
    assert not waiting.done()
    leading = False
    with pytest.raises(LeadershipLost, match="no longer leading at 3"):
        await asyncio.wait_for(waiting, 5.0)


async def test_a_leader_that_keeps_leading_still_gives_up_after_the_timeout() -> None:
    proc = processor(catch_up_timeout=0.1)
    with pytest.raises(NotCaughtUp, match="agreed state at 3, log at 10") as caught:
        await proc.resync(at_least=10)
    assert not isinstance(caught.value, LeadershipLost)
