"""SIGKILL of PostgreSQL while an agent writes to its vector memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.scenarios import postgres_killed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


async def test_vector_writes_fail_clearly_during_a_postgres_kill_and_lose_nothing(
    tmp_path: Path,
) -> None:
    result = await postgres_killed(tmp_path)
    assert result.ok, result.explain()
    # The outage was seen by the agent as UNAVAILABLE, and writes went on after it.
    assert result.details["writes_failed_unavailable"] > 0
    assert result.details["writes_acked_after_fault"] >= 20
