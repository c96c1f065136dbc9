"""The README's echo agent, with default settings, under 64 requests in flight for 60 s, is never
quarantined or restarted: its calls, log lines and mailbox grow with the load, which is not an
anomaly.

A real nats-server, an in-process Hive (with its default healing: quarantine on a critical
finding, restart after repeated warnings), scheduler, Observer and one pod. The echo
(examples/echo/echo.wat, one debug log line per message) first gets a trickle of traffic until
it is past its critical warm-up, so the detectors are armed when the load starts; then 64
requesters keep a request each in flight. Measured before this test existed: quarantined as a
critical `log_flood` within about a second of the load, or as a critical `backlog` without the
log line.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from schemas import names
from tests.helpers.pods import agent as agent_info
from tests.helpers.pods import deploy, running_on
from tests.helpers.stack import Stack
from tests.observer.live import CRITICAL_WARMUP, HEALING, caught_up, echo_pod_observed, events

IN_FLIGHT = 64
LOAD_S = 60.0


async def requester(stack: Stack, stop: asyncio.Event, tally: dict[str, int]) -> None:
    """One request in flight at a time, until stopped."""
    subject = names.mesh_agent_subject("default", "echo")
    while not stop.is_set():
        try:
            reply = await stack.client.nc.request(subject, b'{"hello": "swarm"}', timeout=5)
        except Exception:  # a timeout on a loaded machine: counted, not fatal
            tally["timeouts"] += 1
            continue
        if reply.headers and reply.headers.get(names.HEADER_AGENT_ERROR) == "1":
            tally["refused"] += 1
            await asyncio.sleep(0.05)
        else:
            tally["answered"] += 1


@pytest.mark.solo
@pytest.mark.timeout(240)
async def test_the_echo_agent_under_64_requests_in_flight_is_never_quarantined(
    tmp_path: Path,
) -> None:
    async with echo_pod_observed(tmp_path) as (stack, observer, wasm):
        await deploy(stack, "echo", wasm)  # default healing policy
        await running_on(stack, "echo", "p1")
        agent_id = (await agent_info(stack, "echo"))["agent_id"]

        # A trickle until the detectors are armed (past the critical warm-up).
        subject = names.mesh_agent_subject("default", "echo")
        deadline = time.monotonic() + 60
        while True:
            await stack.client.nc.request(subject, b'{"hello": "swarm"}', timeout=5)
            state = observer.core.agents.get(agent_id)
            if state is not None and state.analysis.active >= CRITICAL_WARMUP + 2:
                break
            assert time.monotonic() < deadline, "the echo never got past its warm-up"
            await asyncio.sleep(0.25)

        stop = asyncio.Event()
        tally = {"answered": 0, "refused": 0, "timeouts": 0}
        tasks = [asyncio.create_task(requester(stack, stop, tally)) for _ in range(IN_FLIGHT)]
        await asyncio.sleep(LOAD_S)
        stop.set()
        await asyncio.gather(*tasks)
        await caught_up(stack, observer, 60)

        # The load was real: many calls, a log line per call counted, a deep mailbox.
        state = observer.core.agents[agent_id]
        assert tally["answered"] > 5 * LOAD_S, tally
        logs_per_call = state.analysis.baselines["logs_per_call"].median()
        assert 0.5 < logs_per_call < 2, logs_per_call
        deepest = 0
        async for d in stack.client.replay(names.STREAM_METRICS):
            for row in json.loads(d.data)["replicas"]:
                if row["agent_id"] == agent_id:
                    deepest = max(deepest, row["mailbox"])
        assert deepest >= 8, deepest

        # ... and nothing about it was worth stopping the agent: no critical finding, no
        # healing action, no refused request.
        about = [(t, d) for t, d in await events(stack) if d.get("agent_id") == agent_id]
        findings = [(d["kind"], d["severity"]) for t, d in about if t.endswith("anomaly_detected")]
        assert not [f for f in findings if f[1] == "critical"], findings
        healing = [t for t, _ in about if t.rsplit(".", 1)[-1] in HEALING]
        assert healing == [], (healing, findings)
        assert tally["refused"] == 0, (tally, findings)
        info = await agent_info(stack, "echo")
        assert not info.get("quarantine"), info
