"""The pod process end to end: a real nats-server, an in-process Hive and scheduler, and real
pods running WAT agents in wasmtime."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from schemas import commands, names
from schemas.specs import Limits
from tests.helpers.agents import COUNTER, ECHO, LOOP
from tests.helpers.cli_process import swarm
from tests.helpers.pods import (
    UNHURRIED,
    ask,
    cluster,
    count,
    deploy,
    events,
    has_status,
    lose_pod,
    running_on,
    running_pod,
)
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


async def test_an_echo_agent_runs_and_answers(tmp_path: Path) -> None:
    async with cluster(tmp_path) as stack, running_pod(stack, "p1") as (pod, _):
        await deploy(stack, "echo", ECHO)
        await running_on(stack, "echo", "p1")
        assert await ask(stack, "echo", b'{"hello": "world"}') == (b'{"hello": "world"}', False)
        # Messages come back in the order they were sent.
        replies = await asyncio.gather(*(ask(stack, "echo", b"%d" % i) for i in range(20)))
        assert [r for r, _ in replies] == [b"%d" % i for i in range(20)]
        starting = [e async for e in events(stack, "swarm.agent.replica_starting")]
        assert [e["data"]["pod_id"] for e in starting] == ["p1"]
        assert pod.replicas  # the replica is the pod's


async def test_a_counter_keeps_its_state_across_stop_and_scale_up(tmp_path: Path) -> None:
    async with cluster(tmp_path) as stack, running_pod(stack, "p1"):
        await deploy(stack, "counter", COUNTER, limits=UNHURRIED)
        await running_on(stack, "counter", "p1")
        assert [await count(stack, "counter") for _ in range(3)] == [1, 2, 3]

        await stack.send([(commands.StopAgent(name="counter"), "user:test")])
        await wait_until(lambda: has_status(stack, "counter", "stopped"), 45, "counter stopped")
        stopped = [e async for e in events(stack, "swarm.agent.replica_stopped")]
        assert stopped[0]["data"]["snapshot"].startswith(f"{names.SNAPSHOTS_BUCKET}/")

        await stack.send([(commands.ScaleAgent(name="counter", replicas=1), "user:test")])
        await running_on(stack, "counter", "p1")
        assert await count(stack, "counter") == 4
        # The new replica's events say which snapshot it resumed from.
        starting = [e async for e in events(stack, "swarm.agent.replica_starting")]
        assert starting[-1]["data"]["snapshot"] == stopped[0]["data"]["snapshot"]


async def test_a_counter_survives_the_loss_of_its_pod(tmp_path: Path) -> None:
    async with cluster(tmp_path) as stack:
        async with running_pod(stack, "doomed", lease_s=1.0) as (pod, task):
            await deploy(stack, "counter", COUNTER, limits=UNHURRIED)
            await running_on(stack, "counter", "doomed")
            assert [await count(stack, "counter") for _ in range(2)] == [1, 2]
            await lose_pod(pod, task)
        async with running_pod(stack, "spare"):
            await running_on(stack, "counter", "spare")
            assert await count(stack, "counter") == 3
        pods = {p["pod_id"]: p for p in await stack.pods()}
        assert pods["doomed"]["status"] == "lost"


async def test_a_looping_agent_crashes_while_its_neighbour_keeps_answering(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as stack, running_pod(stack, "p1"):
        await deploy(stack, "echo", ECHO)
        await deploy(stack, "spinner", LOOP, limits=Limits(deadline_ms=300))
        await running_on(stack, "echo", "p1")
        await running_on(stack, "spinner", "p1")

        spin = asyncio.create_task(ask(stack, "spinner", b"go"))
        await asyncio.sleep(0.05)
        # The neighbour answers while the spinner burns its call on another thread.
        for i in range(5):
            assert await ask(stack, "echo", b"%d" % i) == (b"%d" % i, False)
        body, error = await spin
        assert error
        assert "deadline" in json.loads(body)["error"] or "fuel" in json.loads(body)["error"]

        async def crashed() -> list[dict[str, Any]]:
            return [e async for e in events(stack, "swarm.agent.replica_crashed")]

        await wait_until(lambda: _true_async(crashed()), 45, "crash reported")
        reason = (await crashed())[0]["data"]["reason"]
        assert "deadline" in reason or "fuel" in reason
        assert await ask(stack, "echo", b"still here") == (b"still here", False)


async def _true_async(items: Any) -> bool:
    return bool(await items)


async def test_the_cli_deploys_the_wat_example_and_talks_to_it(tmp_path: Path) -> None:
    """What the README shows: deploy examples/echo/echo.wat, then `swarm agent send`."""
    async with cluster(tmp_path) as stack, running_pod(stack, "pod-cli"):
        code, out, err = await swarm(
            stack.url, "agent", "deploy", "echo", "--module", "examples/echo/echo.wat", "--wait"
        )
        assert code == 0, out + err
        assert "is running" in out
        code, out, err = await swarm(stack.url, "agent", "send", "echo", '{"hello": "swarm"}')
        assert code == 0, err
        assert json.loads(out) == {"hello": "swarm"}
        code, out, err = await swarm(stack.url, "agent", "send", "nobody", "hi")
        assert code == 1
        assert "agent default/nobody not found" in err
        broken = _write(tmp_path / "broken.wat", "(module (func")
        code, out, err = await swarm(stack.url, "agent", "deploy", "bad", "--module", str(broken))
        assert code == 2
        assert "not valid WebAssembly text" in err
        # This one parses, but the engine refuses it.
        mistyped = _write(tmp_path / "mistyped.wat", "(module (func (result i32)))")
        code, out, err = await swarm(stack.url, "agent", "deploy", "bad", "--module", str(mistyped))
        assert code == 2
        assert "not a valid WebAssembly module" in err


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
