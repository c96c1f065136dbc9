"""Leases that survive load: a pod process whose event loop is held busy for four leases keeps
heartbeating and answers the Hive's liveness probe (from its heartbeat thread), so it is not
declared lost and its agent stays put; the same pod SIGKILLed is declared lost, the reason
naming the unanswered probe."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from schemas import names
from swarm.kernel.tasks import cancel_and_wait
from tests.helpers.agents import ECHO
from tests.helpers.pods import ask, cluster, deploy, events, running_on, running_pod
from tests.helpers.probes import answering, heartbeat_threads, nobody_listens, probe
from tests.helpers.processes import service_process
from tests.helpers.stack import Stack
from tests.helpers.waiting import true, wait_until

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
POD = "busy"
LEASE_S = 2.0
#: How long the pod's loop is held: four leases.
BUSY_S = 4 * LEASE_S


@contextlib.asynccontextmanager
async def busy_pod(stack: Stack) -> AsyncIterator[subprocess.Popen[bytes]]:
    """tests/runtime/busy_pod.py in its own process (SIGUSR1 holds its loop for `BUSY_S`)."""
    settings = {
        "SWARM_NATS_URL": stack.url,
        "SWARM_POD_ID": POD,
        "SWARM_POD_CACHE_DIR": str(stack.root / POD / "modules"),
        "SWARM_POD_LEASE_S": str(LEASE_S),
        "SWARM_TEST_BUSY_S": str(BUSY_S),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    with service_process("tests.runtime.busy_pod", settings, stack.root / "pod.log") as proc:
        yield proc


async def pod_status(stack: Stack) -> str | None:
    return next((p["status"] for p in await stack.pods() if p["pod_id"] == POD), None)


async def test_a_pod_with_a_busy_loop_keeps_its_lease_and_a_killed_one_loses_it(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as stack, busy_pod(stack) as proc:

        async def ready() -> bool:
            return await pod_status(stack) == "ready"

        await wait_until(ready, 60, "the pod registered")
        await deploy(stack, "echo", ECHO)
        await running_on(stack, "echo", POD)

        beats: list[float] = []

        async def on_beat(msg: Msg) -> None:
            beats.append(time.monotonic())

        await stack.client.nc.subscribe(names.heartbeat_subject(POD), cb=on_beat)

        proc.send_signal(signal.SIGUSR1)
        answers: list[dict[str, Any]] = []

        async def lag_at_least(seconds: float) -> bool:
            answer = await probe(stack.client.nc, POD)
            if answer is not None:
                answers.append(answer)
            return answer is not None and answer["loop_lag_s"] >= seconds

        # Answered while the loop has been held longer than the lease...
        await wait_until(lambda: lag_at_least(1.5 * LEASE_S), 60, "a probe answered while busy")
        busy_seen = time.monotonic()
        assert answers[-1]["pod_id"] == POD

        async def free() -> bool:
            answer = await probe(stack.client.nc, POD)
            return answer is not None and answer["loop_lag_s"] < 0.5 * LEASE_S

        # ...and heartbeats went on meanwhile, until the loop ran again.
        await wait_until(free, 60, "the pod's loop running again")
        free_seen = time.monotonic()
        during = [t for t in beats if busy_seen <= t <= free_seen]
        assert len(during) >= 3, (len(during), free_seen - busy_seen)

        # Not declared lost: its agent answers from where it was placed, placed once.
        assert await pod_status(stack) == "ready"
        assert await ask(stack, "echo", b"still here", timeout=30) == (b"still here", False)
        assert [e async for e in events(stack, "swarm.pod.lost")] == []
        scheduled = [e async for e in events(stack, "swarm.agent.replica_scheduled")]
        assert [e["data"]["pod_id"] for e in scheduled] == [POD]

        proc.kill()
        await asyncio.to_thread(proc.wait)  # the Hive and scheduler run on this loop

        async def lost() -> list[dict[str, Any]]:
            return [e async for e in events(stack, "swarm.pod.lost") if e["data"]["pod_id"] == POD]

        async def declared_lost() -> bool:
            return bool(await lost())

        await wait_until(declared_lost, 60, "the killed pod declared lost")
        reason = (await lost())[0]["data"]["reason"]
        assert "liveness probe" in reason, reason


async def test_a_pod_answers_probes_publishes_its_lag_and_leaves_no_thread_behind(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as stack:
        nc = stack.client.nc
        metrics: list[dict[str, Any]] = []

        async def on_metrics(msg: Msg) -> None:
            metrics.append(json.loads(msg.data))

        await nc.subscribe(names.metrics_subject("calm", names.METRIC_AGENT), cb=on_metrics)
        async with running_pod(stack, "calm", lease_s=LEASE_S):

            async def answers() -> bool:
                answer = await probe(nc, "calm")
                return answer is not None and answer["pod_id"] == "calm"

            await wait_until(answers, 30, "a probe answered")
            assert len(heartbeat_threads("calm")) == 1
            await wait_until(lambda: true(bool(metrics)), 30, "a metrics message")
            assert set(metrics[0]["pod"]) == {
                "loop_lag_ms",
                "reports_dropped",
                "reports_refused",
                "heartbeats",
                "probes_answered",
                "mesh_unauthenticated",
                "mesh_forbidden",
                "mesh_replayed",
            }
            assert metrics[0]["pod"]["loop_lag_ms"] >= 0
        # Stopped: the thread is joined and its connection closed.
        assert heartbeat_threads("calm") == []
        await wait_until(lambda: nobody_listens(nc, "calm"), 30, "the probe unanswered")

        # The abrupt path (cancelled, as by kill -9 in-process) stops it too.
        async with running_pod(stack, "abrupt", lease_s=LEASE_S) as (_, task):
            await wait_until(lambda: answering(nc, "abrupt"), 30, "a probe answered")
            await cancel_and_wait([task])
            assert heartbeat_threads("abrupt") == []
            await wait_until(lambda: nobody_listens(nc, "abrupt"), 30, "the probe unanswered")
