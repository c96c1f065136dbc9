"""The fold thread keeps the cycle collector off the state only while it folds a backlog."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.hive.freezer import Freezer


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_backlog_freezes_and_its_end_thaws() -> None:
    freezer = Freezer(clock=Clock())
    kept = [[i] for i in range(1000)]
    freezer.folded(backlog=True)
    assert gc.get_freeze_count() >= len(kept)
    freezer.folded(backlog=False)
    assert gc.get_freeze_count() == 0
    freezer.thaw()  # twice is harmless
    assert gc.get_freeze_count() == 0


def test_no_backlog_freezes_nothing() -> None:
    freezer = Freezer(clock=Clock())
    freezer.folded(backlog=False)
    assert gc.get_freeze_count() == 0


def test_a_long_backlog_is_collected_once_in_a_while() -> None:
    clock = Clock()
    freezer = Freezer(max_frozen_s=60.0, clock=clock)
    freezer.folded(backlog=True)
    # Garbage in a reference cycle, frozen while it was alive: only a thaw lets it be collected.
    cycle: list[object] = []
    cycle.append(cycle)
    freezer.folded(backlog=True)
    del cycle
    assert gc.get_freeze_count() > 0
    clock.now = 61.0
    collected = gc.get_stats()[2]["collections"]
    freezer.folded(backlog=True)
    assert gc.get_freeze_count() == 0
    assert gc.get_stats()[2]["collections"] > collected
    # The backlog goes on: the next chunk freezes again, for another `max_frozen_s`.
    freezer.folded(backlog=True)
    assert gc.get_freeze_count() > 0
