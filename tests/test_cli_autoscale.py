"""`swarm agent deploy --autoscale`, `swarm agent autoscale` and `swarm task` against a real Hive
(and, for `task send --wait`, the scheduler's distributor) on a fresh nats-server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from schemas import names
from services.scheduler.autoscaler_service import AutoscalerService, AutoscalerSettings
from swarm.kernel.settings import Settings
from tests.helpers.cli import cli, described, ok, stack, wasm
from tests.helpers.samples import sample
from tests.helpers.services import in_this_loop
from tests.helpers.stack import Stack
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(60)
__all__ = ["stack", "wasm"]  # fixtures from tests.helpers.cli


async def policy_of(stack: Stack, name: str) -> Any:
    return (await described(stack, name))["agent"]["autoscale"]


async def test_deploy_with_autoscale_then_change_and_remove_the_policy(
    stack: Stack, wasm: Path
) -> None:
    autoscale = "min=1,max=5,target-rate=50,horizon=20"
    ok(await cli(stack, "agent", "deploy", "auto", "--module", wasm, "--autoscale", autoscale))
    policy = await policy_of(stack, "auto")
    assert policy["min_replicas"] == 1
    assert policy["max_replicas"] == 5
    assert policy["target_rate"] == 50.0
    assert policy["horizon_s"] == 20.0
    assert policy["method"] == "holt"
    text = ok(await cli(stack, "agent", "describe", "auto")).stdout
    assert "1..5 replicas, 50 msg/s per replica, holt forecast 20s ahead" in text

    # Options not given keep the current policy.
    changed = ok(await cli(stack, "agent", "autoscale", "auto", "--max", "8", "--cooldown", "5"))
    assert "agent default/auto autoscaled: 1..8 replicas" in changed.stdout
    policy = await policy_of(stack, "auto")
    assert (policy["max_replicas"], policy["cooldown_s"], policy["target_rate"]) == (8, 5.0, 50.0)
    ok(await cli(stack, "agent", "autoscale", "auto", "--set", "target-queue=20,method=ewma"))
    policy = await policy_of(stack, "auto")
    assert (policy["target_queue"], policy["method"], policy["max_replicas"]) == (20.0, "ewma", 8)

    off = ok(await cli(stack, "agent", "autoscale", "auto", "--off"))
    assert "no longer autoscaled" in off.stdout
    assert await policy_of(stack, "auto") is None
    assert "Autoscale:" in (text := ok(await cli(stack, "agent", "describe", "auto")).stdout)
    assert "off" in text


async def test_bad_policies_exit_2_with_the_reason(stack: Stack, wasm: Path) -> None:
    bounds = await cli(
        stack, "agent", "deploy", "bad", "--module", wasm, "--autoscale", "min=5,max=2"
    )
    assert bounds.exit_code == 2
    assert "min_replicas (5) is above max_replicas (2)" in bounds.output
    unknown = await cli(stack, "agent", "deploy", "bad", "--module", wasm, "--autoscale", "mni=1")
    assert unknown.exit_code == 2
    assert "known key" in unknown.output
    number = await cli(stack, "agent", "deploy", "bad", "--module", wasm, "--autoscale", "max=x")
    assert number.exit_code == 2
    assert "needs a number" in number.output
    both = await cli(stack, "agent", "autoscale", "bad", "--off", "--max", "3")
    assert both.exit_code == 2
    missing = await cli(stack, "agent", "autoscale", "nobody", "--max", "3")
    assert missing.exit_code == 1
    assert "nobody" in missing.output


async def test_task_send_queues_and_waits_for_the_answer(stack: Stack) -> None:
    nc = stack.client.nc
    queued = ok(await cli(stack, "task", "send", "later", '{"n": 1}'))
    assert "queued on later" in queued.stdout
    listed = json.loads(ok(await cli(stack, "task", "ls", "-o", "json")).stdout)
    assert {"queue": "later", "waiting": 1} in listed["queues"]
    bad = await cli(stack, "task", "send", "no.dots", "x")
    assert bad.exit_code == 2

    # A replica taking "jobs" (played by a subscriber on its subject) and the distributor.
    async def replica(msg: Msg) -> None:
        await nc.publish(msg.reply, b"done:" + msg.data, headers={names.HEADER_AGENT_STATUS: "0"})

    await nc.subscribe(names.mesh_replica_subject("w-0"), cb=replica)
    service = AutoscalerService(
        Settings(nats_url=stack.url), AutoscalerSettings(step_s=60, stale_after_s=60)
    )
    async with in_this_loop(service):
        body = sample(1, [("w-0", 0, 0)], agent_id="w")
        await nc.publish(names.metrics_subject("p1", names.METRIC_AGENT), json.dumps(body).encode())

        async def known() -> bool:
            return "w-0" in service.autoscaler.metrics.replicas

        await wait_until(known, 45, "replica sample folded")
        answered = ok(await cli(stack, "task", "send", "jobs", '{"n": 2}', "--wait"))
        assert answered.stdout.strip() == 'done:{"n": 2}'
        # Nothing takes "later": --wait gives up with exit 3 and the task stays queued.
        waited = await cli(stack, "task", "send", "later", "x", "--wait", "--timeout", "0.5")
        assert waited.exit_code == 3
        listed = json.loads(ok(await cli(stack, "task", "ls", "-o", "json")).stdout)
        assert {"queue": "later", "waiting": 2} in listed["queues"]


async def test_a_spec_file_carries_the_policy_and_flags_override_it(
    stack: Stack, wasm: Path
) -> None:
    document = {
        "name": "from-file",
        "spec": {"module": wasm.name, "task_queues": ["jobs"]},
        "autoscale": {"max_replicas": 3, "target_rate": 10},
    }
    path = wasm.parent / "from-file.json"
    path.write_text(json.dumps(document))
    ok(await cli(stack, "agent", "deploy", "-f", path, "--autoscale", "max=4"))
    policy = await policy_of(stack, "from-file")
    assert (policy["max_replicas"], policy["target_rate"]) == (4, 10.0)
    spec = (await described(stack, "from-file"))["agent"]["spec"]
    assert spec["task_queues"] == ["jobs"]
    bad = wasm.parent / "bad-policy.json"
    bad.write_text(json.dumps({**document, "name": "bad-file", "autoscale": [1]}))
    refused = await cli(stack, "agent", "deploy", "-f", bad)
    assert refused.exit_code == 2
    assert "autoscale must be an object" in refused.output
