"""The HTTP API in front of a real nats-server and a real Hive (in this event loop)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from services.scheduler import Scheduler, SchedulerSettings
from swarm.gateway import GatewaySettings, create_app
from swarm.kernel.settings import Settings
from tests.scheduler.stack import Stack, running_stack

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response's problem document, checked to have the documented shape."""
    assert response.status_code == status, response.text[:2000]
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://swarm.dev/problems/")
    assert body["title"]
    assert body["detail"]
    assert set(body) == {
        "type",
        "title",
        "status",
        "detail",
        "instance",
        "errors",
        "rule",
        "command_id",
    }
    return body


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One nats-server and Hive per module; tests keep apart by agent and namespace names."""
    async with running_stack(tmp_path_factory.mktemp("gateway")) as running:
        yield running


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """An authenticated client of the app over ASGI, sharing the test's NATS connection."""
    app = create_app(Settings(nats_url=stack.url), GatewaySettings(), log=stack.client, token=TOKEN)
    # raise_app_exceptions=False: a 500 must reach the test as the response a client would get.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://swarm.test", headers=AUTH, timeout=30
    ) as client:
        yield client


@asynccontextmanager
async def scheduler(url: str) -> AsyncIterator[Scheduler]:
    """A market scheduler in this event loop (it answers `GET /v1/market`)."""
    running = Scheduler(Settings(nats_url=url), SchedulerSettings(policy="market"))
    task = asyncio.create_task(running.run())
    try:
        await asyncio.wait_for(running.live.wait(), 10)
        yield running
    finally:
        running.stop()
        await asyncio.wait_for(task, 10)
