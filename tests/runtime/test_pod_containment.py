"""Containment on a real pod: an agent that breaks (runs out of memory, or is not a valid agent
at all) is reported `crashed` with a reason that says why, and its neighbour on the same pod keeps
answering. And the C counter example, deployed inline, keeps its count across a restart, across
the loss of its pod, and across a restart followed by the loss of its pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import wasmtime

from schemas import commands
from tests.helpers.agents import ECHO, ENV_FOO, MEMORY_BOMB
from tests.helpers.pods import (
    UNHURRIED,
    agent,
    ask,
    cluster,
    deploy,
    events,
    has_status,
    lose_pod,
    running_on,
    running_pod,
)
from tests.helpers.stack import Stack
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


async def crashes(stack: Stack, name: str) -> list[dict[str, Any]]:
    """The data of every replica_crashed event of agent `name`."""
    agent_id = (await agent(stack, name)).get("agent_id")
    if agent_id is None:
        return []  # not on the log yet
    return [
        e["data"]
        async for e in events(stack, "swarm.agent.replica_crashed")
        if e["data"]["agent_id"] == agent_id
    ]


async def first_crash(stack: Stack, name: str) -> dict[str, Any]:
    async def crashed() -> bool:
        return bool(await crashes(stack, name))

    await wait_until(crashed, 15, f"{name} reported crashed")
    return (await crashes(stack, name))[0]


async def echoes(stack: Stack, label: str) -> None:
    for i in range(3):
        body = b"%s %d" % (label.encode(), i)
        assert await ask(stack, "echo", body) == (body, False)


async def test_a_memory_bomb_crashes_for_memory_while_its_neighbour_keeps_answering(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as stack, running_pod(stack, "p1"):
        await deploy(stack, "echo", ECHO)
        await deploy(stack, "bomb", MEMORY_BOMB)  # Resources(memory_mb=16), from spec()
        await running_on(stack, "echo", "p1")
        await running_on(stack, "bomb", "p1")
        await echoes(stack, "before")

        body, error = await ask(stack, "bomb", b"boom")
        assert error, body
        assert b"memory" in body

        crash = await first_crash(stack, "bomb")
        assert crash["pod_id"] == "p1"
        assert "memory limit of 16.0 MiB" in crash["reason"], crash["reason"]
        await echoes(stack, "after")


# Valid WebAssembly that the ABI check refuses (so is agents.ENV_FOO), and what the reason names.
NO_HANDLE = bytes(
    wasmtime.wat2wasm(
        """
(module
  (memory (export "memory") 1)
  (func (export "swarm_alloc") (param i32) (result i32) (i32.const 0)))
"""
    )
)


@pytest.mark.parametrize(
    ("wasm", "expected"),
    [
        pytest.param(NO_HANDLE, 'does not export "swarm_handle"', id="no-swarm_handle"),
        pytest.param(
            ENV_FOO, 'imports env::foo: core agents may import only from "swarm"', id="env.foo"
        ),
    ],
)
async def test_a_module_failing_the_abi_check_crashes_with_the_reason(
    tmp_path: Path, wasm: bytes, expected: str
) -> None:
    async with cluster(tmp_path) as stack, running_pod(stack, "p1"):
        await deploy(stack, "echo", ECHO)
        await running_on(stack, "echo", "p1")
        await echoes(stack, "before")

        await deploy(stack, "broken", wasm)
        crash = await first_crash(stack, "broken")
        assert crash["pod_id"] == "p1"
        assert crash["reason"].startswith("failed to start:"), crash["reason"]
        assert expected in crash["reason"], crash["reason"]
        assert "ABI" in crash["reason"]  # points at runtime/ABI.md
        await echoes(stack, "after")


async def count_c(stack: Stack, name: str) -> int:
    """counter-c replies with the new count as decimal text."""
    body, error = await ask(stack, name, b"tick")
    assert not error, body
    return int(body)


async def restart(stack: Stack, name: str, pod_id: str) -> None:
    """StopAgent (a last snapshot, reported), then ScaleAgent back to one replica."""
    await stack.send([(commands.StopAgent(name=name), "user:test")])
    await wait_until(lambda: has_status(stack, name, "stopped"), 45, f"{name} stopped")
    stopped = [e async for e in events(stack, "swarm.agent.replica_stopped")]
    assert stopped[-1]["data"]["snapshot"]
    await stack.send([(commands.ScaleAgent(name=name, replicas=1), "user:test")])
    await running_on(stack, name, pod_id)


async def test_the_c_counter_keeps_its_count_across_a_restart(
    tmp_path: Path, counter_c: bytes
) -> None:
    async with cluster(tmp_path) as stack, running_pod(stack, "p1"):
        await deploy(stack, "counter", counter_c, limits=UNHURRIED)
        await running_on(stack, "counter", "p1")
        assert [await count_c(stack, "counter") for _ in range(3)] == [1, 2, 3]
        await restart(stack, "counter", "p1")
        assert await count_c(stack, "counter") == 4


@pytest.mark.parametrize("restarted", [False, True], ids=["lost", "restarted-then-lost"])
async def test_the_c_counter_keeps_its_count_across_the_loss_of_its_pod(
    tmp_path: Path, counter_c: bytes, restarted: bool
) -> None:
    """Lost with its pod, straight away or after a restart on it: the spare resumes the count
    either way."""
    async with cluster(tmp_path) as stack:
        # A lease of 1 s lost the pod before its counter ran, with the suite and four busy
        # loops beside it (the replica then waited for a pod that fits); 3 s still ends the
        # test's loss quickly.
        async with running_pod(stack, "doomed", lease_s=3.0) as (pod, task):
            await deploy(stack, "counter", counter_c, limits=UNHURRIED)
            await running_on(stack, "counter", "doomed")
            assert [await count_c(stack, "counter") for _ in range(3)] == [1, 2, 3]
            if restarted:
                await restart(stack, "counter", "doomed")
                assert await count_c(stack, "counter") == 4
            await lose_pod(pod, task)
        async with running_pod(stack, "spare"):
            await running_on(stack, "counter", "spare")
            assert await count_c(stack, "counter") == (5 if restarted else 4)
        pods = {p["pod_id"]: p for p in await stack.pods()}
        assert pods["doomed"]["status"] == "lost"
