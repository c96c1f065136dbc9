"""The API's reads beyond the Hive's state: the scheduler's market, an agent's log lines and a
command's causation tree, against a real Hive (and a real scheduler for the market)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from schemas import names
from services.observer.behaviour import DIMENSIONS, BehaviourRow, BehaviourStore
from swarm.devstack.stack import upgrade_database
from swarm.gateway import GatewaySettings, create_app
from swarm.kernel.settings import Settings
from tests.gateway.client import AUTH, SPEC, TOKEN, problem
from tests.gateway.server import scheduler
from tests.helpers.stack import Stack, running_stack
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def client_of(stack: Stack, database_url: str | None) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(nats_url=stack.url, database_url=database_url)
    app = create_app(settings, GatewaySettings(), log=stack.client, token=TOKEN)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://swarm.test", headers=AUTH, timeout=30
    ) as client:
        yield client


async def test_market_answers_the_schedulers_offers_and_clearings(tmp_path: Path) -> None:
    # A stack of its own: the market places every waiting agent, and the module's shared stack
    # has whatever the other tests deployed on it.
    async with running_stack(tmp_path) as stack, client_of(stack, None) as api:
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

            await wait_until(placed, 30, "a clearing")
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


def unit(*weights: float) -> list[float]:
    return [*weights, *([0.0] * (DIMENSIONS - len(weights)))]


async def test_similar_agents_are_nearest_by_behaviour(stack: Stack, database_url: str) -> None:
    await asyncio.to_thread(upgrade_database, database_url)
    store = BehaviourStore(database_url)
    try:
        store.store(
            [
                BehaviourRow("gw-sim-a", "gwsim", "alike-a", 1000.0, unit(1.0, 0.1), {}),
                BehaviourRow("gw-sim-b", "gwsim", "alike-b", 1000.0, unit(1.0, 0.12), {}),
                BehaviourRow("gw-sim-c", "gwsim", "other", 1000.0, unit(0.0, 1.0), {}),
            ]
        )
    finally:
        store.close()

    async with client_of(stack, database_url) as api:
        answer = await api.get("/v1/namespaces/gwsim/agents/alike-a/similar", params={"k": 50})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["agent_id"] == "gw-sim-a"
        ours = [s for s in body["similar"] if s["agent_id"].startswith("gw-sim-")]
        assert [s["agent_id"] for s in ours] == ["gw-sim-b", "gw-sim-c"]
        assert ours[0]["distance"] < 0.01 < ours[1]["distance"]
        assert ours[0]["namespace"] == "gwsim"
        assert ours[0]["name"] == "alike-b"
        problem(await api.get("/v1/namespaces/gwsim/agents/nobody/similar"), 404)
        problem(await api.get("/v1/namespaces/gwsim/agents/alike-a/similar?k=0"), 422)

    # An API without a database says so, as a problem.
    async with client_of(stack, None) as api:
        missing = problem(await api.get("/v1/namespaces/gwsim/agents/alike-a/similar"), 503)
        assert "SWARM_DATABASE_URL" in missing["detail"]


async def test_a_task_is_stored_on_its_queue_once_per_key(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    body = b'{"text": "summarise this"}'
    sent = await api.post(
        "/v1/tasks/gw-summaries",
        content=body,
        headers={"Content-Type": "application/json", "Idempotency-Key": "gw-task-1"},
    )
    assert sent.status_code == 202, sent.text
    queued = sent.json()
    assert queued["task_id"] == "gw-task-1"
    assert queued["queue"] == "gw-summaries"
    assert queued["duplicate"] is False

    stored = await stack.client.js.get_msg(names.STREAM_TASKS, queued["seq"])
    assert stored.subject == names.task_subject("gw-summaries")
    assert stored.data == body
    assert (stored.headers or {})[names.HEADER_MSG_ID] == "gw-task-1"

    again = (
        await api.post(
            "/v1/tasks/gw-summaries", content=body, headers={"Idempotency-Key": "gw-task-1"}
        )
    ).json()
    assert again["duplicate"] is True
    assert again["seq"] == queued["seq"]
    fresh = (await api.post("/v1/tasks/gw-summaries", content=b"plain text")).json()
    assert fresh["task_id"] != "gw-task-1"
    assert fresh["seq"] > queued["seq"]

    problem(await api.post("/v1/tasks/not%20a%20queue", content=body), 422)
    too_big = b"x" * (stack.client.nc.max_payload + 1)
    problem(await api.post("/v1/tasks/gw-summaries", content=too_big), 413)
