"""50 agents on one real pod, then a CPU hog beside the stack: the Observer blames the machine
(one pod-level finding), not 50 agents, nothing is quarantined, and the pod is not declared lost.

A real nats-server, an in-process Hive (default healing), scheduler, Observer and one pod running
the README's echo agent 50 times. Every agent gets a steady trickle of requests until the
detectors are armed; then processes spinning on every core slow the whole machine for a while,
so every agent's latency rises at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from schemas import names
from swarm.kernel.tasks import cancel_and_wait
from tests.helpers.pods import deploy
from tests.helpers.stack import Stack
from tests.helpers.waiting import wait_until
from tests.observer.live import CRITICAL_WARMUP, HEALING, caught_up, echo_pod_observed, events

AGENTS = 50
HOG_S = 15.0


@contextlib.contextmanager
def cpu_hog(seconds: float) -> Iterator[None]:
    """Busy loops for `seconds` (or until left): twice as many as cores, and as many more as
    the machine's load already has runnable, so that the stack gets at most about a third of
    the CPU it had (on a machine loaded before, a fixed hog changes little, and the Observer
    rightly sees no incident: seen beside four busy loops). Shell loops, as `stress` runs
    them: they start within a millisecond, where Python processes took seconds to start on a
    loaded machine and made the hog a slow ramp."""
    cores = os.cpu_count() or 2
    busy = round(os.getloadavg()[0])
    # `timeout` bounds them should this process die; each in its own group, killed whole.
    loop = ["timeout", f"{seconds:.0f}", "sh", "-c", "while :; do :; done"]
    procs = [subprocess.Popen(loop, start_new_session=True) for _ in range(2 * cores + busy)]
    try:
        yield
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        for p in procs:
            p.wait(10)


async def traffic(stack: Stack, agents: list[str], stop: asyncio.Event) -> None:
    """Each agent a request in turn, round and round, until stopped (timeouts are not fatal:
    a hogged machine answers late). A request that fails at once (the connection closed) is
    followed by a pause: failing without ever awaiting, the loop held the event loop forever and
    grew to 19 GB after the test had failed, and the next test never ran."""
    while not stop.is_set():
        for name in agents:
            if stop.is_set():
                return
            try:
                await stack.client.nc.request(
                    names.mesh_agent_subject("default", name), b"{}", timeout=5
                )
            except Exception:
                await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def sending(stack: Stack, agents: list[str], senders: int = 4) -> AsyncIterator[None]:
    """`senders` loops of `traffic` over `agents`, stopped on the way out whatever happened."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(traffic(stack, agents[k::senders], stop)) for k in range(senders)]
    try:
        yield
    finally:
        stop.set()
        await cancel_and_wait(tasks)


@pytest.mark.slow
@pytest.mark.solo
@pytest.mark.timeout(300)
async def test_a_cpu_hog_beside_50_agents_is_one_pod_finding_and_no_pod_is_lost(
    tmp_path: Path,
) -> None:
    names_ = [f"echo-{i:02d}" for i in range(AGENTS)]
    async with echo_pod_observed(tmp_path) as (stack, observer, wasm):
        for name in names_:
            await deploy(stack, name, wasm)

        async def all_running() -> bool:
            listed = (await stack.query(names.QUERY_AGENTS_LIST))["agents"]
            return sum(a["replicas"]["running"] for a in listed) == AGENTS

        await wait_until(all_running, 120, f"{AGENTS} agents running")
        ids = {a["agent_id"] for a in (await stack.query(names.QUERY_AGENTS_LIST))["agents"]}

        async with sending(stack, names_):

            async def armed() -> bool:
                """Every agent past its critical warm-up, and no machine incident open or just
                closed: on a loaded machine the warm-up can have one, and the hog's slowdown
                would fall inside it, or count as the same one going on
                (`MachineConfig.rejoin_windows`)."""
                states = [observer.core.agents.get(i) for i in ids]
                machines = observer.core.machines
                watch = machines.pods.get("p1")
                rejoin_s = machines.config.rejoin_windows * machines.window_s
                return (
                    all(s is not None and s.analysis.active >= CRITICAL_WARMUP + 3 for s in states)
                    and watch is not None
                    and not watch.incident.active
                    and time.time() - watch.closed_end > rejoin_s + machines.window_s
                )

            await wait_until(armed, 150, "every agent past its critical warm-up, the pod calm")
            before = len(await events(stack))
            with cpu_hog(HOG_S):
                await asyncio.sleep(HOG_S)
            await asyncio.sleep(5)  # a few calm windows after it
        await caught_up(stack, observer, 120)

        after = (await events(stack))[before:]
        pod_findings = [d for t, d in after if t == "swarm.pod.anomaly_detected"]
        agent_findings = [d for t, d in after if t == "swarm.agent.anomaly_detected"]
        lost = [d for t, d in after if t == "swarm.pod.lost"]
        healing = [t for t, _ in after if t.rsplit(".", 1)[-1] in HEALING]
        # What a failure needs to be understood, whole (pytest cuts a long repr short): when
        # each finding's window was, what it said.
        summary = "\n".join(
            f"{d.get('window_start')} {t.removeprefix('swarm.')} {d.get('severity')}: "
            f"{d.get('summary')}"
            for t, d in after
            if t.endswith(".anomaly_detected")
        )
        assert lost == [], summary
        assert 1 <= len(pod_findings) <= 2, summary
        assert len(agent_findings) < 5, summary  # not one per agent
        assert not [d for d in agent_findings if d["severity"] == "critical"], summary
        assert healing == [], summary
