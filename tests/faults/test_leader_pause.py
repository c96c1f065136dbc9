"""SIGSTOP of the Hive leader for longer than its election timeout, then SIGCONT."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.scenarios import leader_paused

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


async def test_a_paused_leader_is_replaced_and_writes_nothing_after(tmp_path: Path) -> None:
    result = await leader_paused(tmp_path)
    assert result.ok, result.explain()
