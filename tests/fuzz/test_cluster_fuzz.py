"""A shorter fuzz run against three Hive replicas in their own processes: besides every
property of the single-replica run, all replicas fold the same log to the same state
(digest-equal) after every batch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from schemas import names
from services.hive.testing import PASSWORD, HiveCluster
from swarm.devstack.embedded import EmbeddedNats
from swarm.kernel.eventlog import EventLog
from swarm.kernel.settings import Settings
from tests.fuzz.harness import (
    FuzzTarget,
    LoopBridge,
    Outcomes,
    Problems,
    fuzz_settings,
    hive_key,
    seal_verifier,
)
from tests.fuzz.sends import Item, batch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

BATCHES = 10


async def _agree(cluster: HiveCluster, log: EventLog, within: float = 30.0) -> None:
    """Every replica folded the log to its end, and their states are digest-equal."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        end = await log.last_sequence(names.STREAM_EVENTS)
        statuses = await cluster.converged(log.nc, end, timeout=within)
        applied = {st["applied_seq"] for st in statuses.values()}
        digests = {st["digest"] for st in statuses.values()}
        if len(statuses) == cluster.size and len(applied) == 1:
            if len(digests) != 1:
                raise Problems(f"replicas disagree at {applied}: {statuses}")
            return
        # The leader wrote again while the digests were read (reconciling leases): read again.
        if loop.time() > deadline:
            raise Problems(f"replicas did not settle on one position: {statuses}")
        await asyncio.sleep(0.2)


async def test_three_replicas_answer_every_fuzzed_command_and_agree(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    cluster = HiveCluster(url, tmp_path)
    cluster.start()
    client = reader = None
    try:
        client = await EventLog.connect(url, name="fuzz-client")
        settings_ = Settings(nats_url=url, hive_public_key=hive_key(PASSWORD))
        reader = await EventLog.connect(url, settings_, name="fuzz-reader")
        await cluster.leader(reader.nc, timeout=60)

        async def status() -> list[dict[str, Any]]:
            found = [await cluster.status(reader.nc, i) for i in range(cluster.size)]
            return [st for st in found if st is not None]

        log = reader

        async def agree() -> None:
            await _agree(cluster, log)

        target = FuzzTarget(client, reader, Outcomes(seal_verifier(PASSWORD)), status, agree=agree)
        bridge = LoopBridge(asyncio.get_running_loop())
        stored: list[int] = []

        @fuzz_settings(BATCHES)
        @given(batch())
        def fuzz(items: list[Item]) -> None:
            stored.extend(entry.seq for entry in bridge(target.round(items)))

        await asyncio.to_thread(fuzz)
        assert len(stored) >= BATCHES, stored
    finally:
        for log_ in (client, reader):
            if log_ is not None:
                await log_.close()
        cluster.stop()
        server.stop()
