"""Fuzzing one real Hive replica over NATS: commands generated from the exported JSON Schemas,
valid and mutated, published straight onto SWARM_COMMANDS (with and without `Nats-Msg-Id`).

After every Hypothesis batch (see `tests/fuzz/harness.py`): every command stored has exactly
one outcome sealed by the Hive, where a client looks for it; a fresh valid command is still
accepted within seconds; nothing the Hive wrote failed to fold.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings
from tests.fuzz.harness import (
    FuzzTarget,
    LoopBridge,
    Outcomes,
    fuzz_settings,
    hive_key,
    seal_verifier,
)
from tests.fuzz.sends import Item, batch
from tests.helpers.stack import running_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

#: The Raft password of `running_stack`'s Hive: its seal key derives from it.
PASSWORD = "secret-123"
#: Batches per run: sized for ~15 s on a busy 2-core machine (each batch waits for its outcomes
#: and a probe).
BATCHES = 30


async def test_every_fuzzed_command_gets_exactly_one_outcome(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        settings_ = Settings(nats_url=stack.url, hive_public_key=hive_key(PASSWORD))
        reader = await EventLog.connect(stack.url, settings_, name="fuzz-reader")
        hive = stack.hive
        assert hive is not None

        async def status() -> list[dict[str, Any]]:
            return [hive.describe()]

        target = FuzzTarget(stack.client, reader, Outcomes(seal_verifier(PASSWORD)), status)
        bridge = LoopBridge(asyncio.get_running_loop())
        labels: Counter[str] = Counter()

        @fuzz_settings(BATCHES)
        @given(batch())
        def fuzz(items: list[Item]) -> None:
            for entry in bridge(target.round(items)):
                labels[entry.label] += 1

        try:
            # In a thread: the Hive deciding the commands runs in this test's event loop.
            await asyncio.to_thread(fuzz)
        finally:
            await reader.close()
    print("commands stored, by kind:", dict(sorted(labels.items())), "accepted:", target.accepted())
    # The run reached both the valid commands and a good spread of mutations.
    assert labels["valid"] >= 10, labels
    assert len(labels) >= 12, labels
    # ... and commands the Hive carried out, not only ones it refused.
    assert target.accepted() >= 5, target.accepted()
