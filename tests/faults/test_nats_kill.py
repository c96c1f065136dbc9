"""SIGKILL of nats-server during a command burst, restarted on its port and store directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.scenarios import nats_killed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


async def test_clients_ride_through_a_nats_server_kill_and_restart(tmp_path: Path) -> None:
    result = await nats_killed(tmp_path)
    assert result.ok, result.explain()
    assert result.details["client_retries"] >= 0
