"""`swarm agent quarantine|release` against a real Hive (no pods: the Hive's record is checked;
tests/runtime/test_healing.py shows a pod refusing messages to a quarantined agent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import cli, described, ok, stack, wasm
from tests.helpers.stack import Stack

pytestmark = pytest.mark.timeout(60)
__all__ = ["stack", "wasm"]  # fixtures from tests.helpers.cli


async def test_quarantine_and_release_by_hand(stack: Stack, wasm: Path) -> None:
    ok(await cli(stack, "agent", "deploy", "suspect", "--module", wasm))
    done = ok(await cli(stack, "agent", "quarantine", "suspect", "--reason", "odd replies"))
    assert "agent default/suspect quarantined" in done.stdout
    agent = (await described(stack, "suspect"))["agent"]
    assert agent["quarantined"]["reason"] == "odd replies"
    assert [h["action"] for h in agent["healing"]] == ["quarantine"]
    text = ok(await cli(stack, "agent", "describe", "suspect")).stdout
    assert "Quarantine  yes" in text
    assert "odd replies" in text

    ok(await cli(stack, "agent", "release", "suspect"))
    agent = (await described(stack, "suspect"))["agent"]
    assert agent["quarantined"] is None
    assert [h["action"] for h in agent["healing"]] == ["quarantine", "release"]

    again = await cli(stack, "agent", "release", "suspect")
    assert again.exit_code == 1
    assert "is not quarantined" in again.output
    missing = await cli(stack, "agent", "quarantine", "nobody")
    assert missing.exit_code == 1
