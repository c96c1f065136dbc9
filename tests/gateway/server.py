"""The API served by a real uvicorn on port 0, in a thread with its own event loop and its own
NATS connection (as `python -m swarm.gateway` would run it)."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import uvicorn

from services.scheduler import Scheduler, SchedulerSettings
from swarm.gateway import GatewaySettings, create_app
from swarm.gateway.protocol import ProblemH11Protocol
from swarm.kernel.settings import Settings
from tests.helpers.services import in_this_loop


@contextmanager
def serving(
    nats_url: str,
    token: str,
    database_url: str | None = None,
    gateway_settings: GatewaySettings | None = None,
) -> Iterator[str]:
    """Serve the API until the block ends; yields its base URL."""
    settings = Settings(nats_url=nats_url, database_url=database_url)
    app = create_app(settings, gateway_settings or GatewaySettings(), token=token)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        http=ProblemH11Protocol,  # as `python -m swarm.gateway` serves it
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@asynccontextmanager
async def scheduler(url: str) -> AsyncIterator[Scheduler]:
    """A market scheduler in this event loop (it answers `GET /v1/market`)."""
    running = Scheduler(Settings(nats_url=url), SchedulerSettings(policy="market"))
    async with in_this_loop(running):
        yield running
