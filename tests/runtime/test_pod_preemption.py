"""Preemption end to end with real pods: a higher-priority agent takes a full pod, the counter it
preempts is saved by its pod as it stops, and resumes with its count on the pod that comes next.

Interval snapshots are off (an hour apart), so the count can only survive through the last
snapshot the pod saves when it sees the preemption."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runtime.config import PodSettings
from runtime.pod import Pod
from schemas import names
from swarm.kernel.settings import Settings
from tests.helpers.agents import COUNTER, ECHO
from tests.helpers.pods import cluster, count, deploy, events, running_on
from tests.helpers.services import in_this_loop
from tests.helpers.stack import Stack
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


@contextlib.asynccontextmanager
async def small_pod(stack: Stack, pod_id: str, memory_mb: int) -> AsyncIterator[Pod]:
    config = PodSettings(
        id=pod_id,
        cache_dir=stack.root / pod_id / "modules",
        snapshot_interval_s=3600,
        metrics_interval_s=0.5,
        memory_mb=memory_mb,
    )
    pod = Pod(Settings(nats_url=stack.url), config)
    async with in_this_loop(pod):
        yield pod


async def test_a_preempted_counter_is_saved_and_resumes_elsewhere(tmp_path: Path) -> None:
    async with cluster(tmp_path) as stack, small_pod(stack, "p1", memory_mb=16) as p1:
        await deploy(stack, "counter", COUNTER)  # 16 MB: fills p1
        await running_on(stack, "counter", "p1")
        assert [await count(stack, "counter") for _ in range(3)] == [1, 2, 3]
        victim = next(iter(p1.replicas.values()))

        await deploy(stack, "vip", ECHO, priority=100)
        await running_on(stack, "vip", "p1")
        preempted = [e["data"] async for e in events(stack, "swarm.agent.replica_preempted")]
        assert [(p["replica_id"], p["priority"], p["by_priority"]) for p in preempted] == [
            (victim.replica_id, 0, 100)
        ]

        async def saved() -> bool:
            return victim.done

        await wait_until(saved, 45, "the preempted replica stopped and saved")
        assert victim.snapshot is not None
        assert str(victim.snapshot).startswith(f"{names.SNAPSHOTS_BUCKET}/")

        async with small_pod(stack, "p2", memory_mb=64):
            await running_on(stack, "counter", "p2")
            assert await count(stack, "counter") == 4  # the count came along
        scheduled: list[Any] = [
            e["data"]["pod_id"] async for e in events(stack, "swarm.agent.replica_scheduled")
        ]
        assert scheduled == ["p1", "p1", "p2"]
