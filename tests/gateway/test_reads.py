"""The API's reads beyond the Hive's state: the scheduler's market, an agent's log lines and a
command's causation tree, against a real Hive (and a real scheduler for the market)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from schemas import names
from services.scheduler import Scheduler, SchedulerSettings
from swarm.kernel.settings import Settings
from tests.gateway.test_api import SPEC, problem
from tests.scheduler.stack import Stack, wait_until

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def scheduler(url: str) -> AsyncIterator[Scheduler]:
    running = Scheduler(Settings(nats_url=url), SchedulerSettings(policy="market"))
    task = asyncio.create_task(running.run())
    try:
        await asyncio.wait_for(running.live.wait(), 10)
        yield running
    finally:
        running.stop()
        await asyncio.wait_for(task, 10)


async def test_market_answers_the_schedulers_offers_and_clearings(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    # No scheduler yet: the API says so as a problem, not a server crash.
    missing = problem(await api.get("/v1/market"), 503)
    assert "scheduler" in missing["detail"]

    await stack.register_pods({"m1": (1024, 8)})
    async with scheduler(stack.url):
        deployed = await api.post(
            "/v1/namespaces/default/agents", json={"name": "priced", "spec": SPEC}
        )
        assert deployed.json()["status"] == "accepted", deployed.text

        async def placed() -> bool:
            state = (await api.get("/v1/market", params={"limit": 5})).json()
            return any(c["outcome"] == "proposed" for c in state["clearings"])

        await wait_until(placed, 15, "a clearing")
        state = (await api.get("/v1/market", params={"limit": 5})).json()
    assert state["policy"] == "market"
    offers = {o["pod_id"]: o for o in state["offers"]}
    assert offers["m1"]["free"]["memory_mb"] == 1024 - 64
    assert offers["m1"]["price_per_unit"] >= 1.0
    assert len(state["clearings"]) <= 5
    problem(await api.get("/v1/market", params={"limit": -1}), 422)


async def publish_line(
    stack: Stack, agent_id: str, level: str, message: str, **extra: object
) -> None:
    body = {
        "time_ms": int(time.time() * 1000),
        "pod_id": "p1",
        "agent_id": agent_id,
        "replica_id": f"{agent_id}-r0",
        "level": level,
        "message": message,
        **extra,
    }
    await stack.client.js.publish(names.logs_subject("p1", level), json.dumps(body).encode())


async def test_logs_are_filtered_by_level_text_and_limit(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    deployed = await api.post("/v1/namespaces/default/agents", json={"name": "talky", "spec": SPEC})
    agent_id = deployed.json()["agent_id"]
    await publish_line(stack, agent_id, "debug", "warming up")
    await publish_line(stack, agent_id, "info", "serving request 1")
    await publish_line(stack, "someone-else", "error", "not ours")
    await publish_line(stack, agent_id, "warn", "slow request 2")
    await publish_line(stack, agent_id, "error", "failed request 3")

    url = "/v1/namespaces/default/agents/talky/logs"
    every = (await api.get(url)).json()
    assert every["agent_id"] == agent_id
    assert [line["message"] for line in every["lines"]] == [
        "warming up",
        "serving request 1",
        "slow request 2",
        "failed request 3",
    ]
    assert every["truncated"] is False
    assert every["lines"][0]["replica_id"] == f"{agent_id}-r0"
    assert every["lines"][0]["time"].endswith("Z")

    warn = (await api.get(url, params={"level": "warn"})).json()
    assert [line["level"] for line in warn["lines"]] == ["warn", "error"]
    grepped = (await api.get(url, params={"grep": "request", "limit": 2})).json()
    assert [line["message"] for line in grepped["lines"]] == ["slow request 2", "failed request 3"]
    assert grepped["truncated"] is True
    recent = (await api.get(url, params={"since": "1h"})).json()
    assert len(recent["lines"]) == 4
    future = (await api.get(url, params={"since": "2999-01-01T00:00:00Z"})).json()
    assert future["lines"] == []

    bad_since = problem(await api.get(url, params={"since": "yesterday-ish"}), 422)
    assert bad_since["errors"][0]["loc"] == "query.since"
    problem(await api.get(url, params={"level": "loud"}), 422)
    problem(await api.get("/v1/namespaces/default/agents/nobody/logs"), 404)


async def test_trace_is_the_commands_causation_tree(api: httpx.AsyncClient) -> None:
    deployed = (
        await api.post("/v1/namespaces/default/agents", json={"name": "traced", "spec": SPEC})
    ).json()
    command_id = deployed["command_id"]

    answer = await api.get(f"/v1/traces/{command_id}", params={"window": 30})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == command_id
    root = body["trace"][0]
    assert root["id"] == command_id
    assert root["kind"] == "command"
    assert root["type"] == "swarm.cmd.agent.deploy"
    assert root["offset_ms"] == 0.0
    assert root["decided_ms"] is not None
    assert root["decided_ms"] >= 0
    kinds = {child["kind"]: child for child in root["children"]}
    assert kinds["outcome"]["causationid"] == command_id
    types = {child["type"] for child in root["children"]}
    assert "swarm.agent.deployed" in types

    # Asked by the id of an event the command caused: the same tree.
    event_id = next(c["id"] for c in root["children"] if c["type"] == "swarm.agent.deployed")
    by_event = (await api.get(f"/v1/traces/{event_id}")).json()
    assert by_event["trace"][0]["id"] == command_id

    problem(await api.get("/v1/traces/no-such-command-anywhere"), 404)
    problem(await api.get("/v1/traces/not%20a%20token"), 422)
