"""A deploy naming a module nobody pushed is rejected by the Hive (rule `module`), instead of
being accepted and crash-looping on every pod it is placed on."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from schemas import command, commands, names
from schemas.specs import AgentSpec, ModuleRef
from swarm.client.commands import wait_for_outcome
from tests.helpers.stack import Stack, running_stack

pytestmark = pytest.mark.timeout(60)

MODULE = b"\0asm\1\0\0\0"
DIGEST = hashlib.sha256(MODULE).hexdigest()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as s:
        yield s


async def deploy(stack: Stack, name: str) -> dict[str, Any]:
    spec = AgentSpec(version="v1", module=ModuleRef(sha256=DIGEST))
    env = command(commands.DeployAgent(name=name, spec=spec), source="t", identity="user:t")
    start = await stack.client.last_sequence(names.STREAM_EVENTS)
    await stack.client.append(env)
    found = await wait_for_outcome(stack.client, env.id, start_seq=start + 1, within=20)
    assert found is not None
    assert found.body is not None
    return found.body


async def test_a_module_that_was_never_pushed_is_rejected_then_accepted_once_pushed(
    stack: Stack,
) -> None:
    rejected = await deploy(stack, "early")
    assert rejected["type"] == "swarm.command.rejected"
    assert rejected["data"]["rule"] == "module"
    assert rejected["data"]["errors"][0]["loc"] == "data.spec.module.sha256"
    assert "swarm module push" in rejected["data"]["reason"]

    store = await stack.client.js.object_store(names.OBJECT_STORE_MODULES)
    await store.put(DIGEST, MODULE)
    assert (await deploy(stack, "late"))["type"] == "swarm.command.accepted"
