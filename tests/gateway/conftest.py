"""The HTTP API in front of a real nats-server and a real Hive (in this event loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from swarm.gateway import GatewaySettings, create_app
from swarm.kernel.settings import Settings
from tests.gateway.client import AUTH, TOKEN
from tests.helpers.stack import Stack, running_stack


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
