"""The HTTP API as a service like the others (`swarm.kernel.lifecycle.Service`): settings checked
before anything starts, `stop()` from a signal handler or another task, `async with` in tests.

uvicorn serves the app, but does not own the process: its own signal capture is left out, so
SIGTERM and SIGINT reach `run_until_signalled`, which stops this service as it stops any other
(uvicorn then drains its connections and runs the app's shutdown, closing the NATS connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn

from swarm.client.lifecycle import Service, SettingsInvalid
from swarm.client.settings import Settings
from swarm.gateway.settings import GatewaySettings

__all__ = ["GatewayFailed", "GatewayService"]


class GatewayFailed(Exception):
    """The API could not start serving."""


class GatewayService(Service):
    name = "gateway"

    def __init__(self, settings: Settings, api: GatewaySettings) -> None:
        super().__init__(settings)
        self.api = api
        self._server: _Server | None = None
        #: Set once the socket listens (`url` says where).
        self.listening = asyncio.Event()

    def check(self) -> None:
        super().check()
        try:
            # Refusing to serve an open API: no token (or an unreadable token file) stops here,
            # as does a principals listing that cannot be read.
            self.api.authenticator()
        except (ValueError, OSError) as exc:
            raise SettingsInvalid(str(exc)) from None

    @property
    def url(self) -> str:
        """Where the API listens (the port uvicorn bound, for port 0)."""
        if self._server is None or self._server.address is None:
            raise RuntimeError("the gateway has not listened yet")
        host, port = self._server.address
        return f"http://{host}:{port}"

    async def serve(self) -> None:
        # Imported here: the web stack takes seconds to import on a loaded machine, and a
        # gateway that will refuse to serve says so first (`check`).
        from swarm.gateway.app import create_app
        from swarm.gateway.protocol import ProblemH11Protocol

        app = create_app(self.settings, self.api)
        config = uvicorn.Config(
            app,
            host=self.api.host,
            port=self.api.port,
            # Proxy headers are not trusted: the API is reached directly, not through a proxy.
            proxy_headers=False,
            # h11, with a parser's refusals answered as problem documents like every other error.
            http=ProblemH11Protocol,
            log_level=self.settings.log_level.lower(),
            # uvicorn's loggers go through the process's logging (`configure_logging`), so its
            # lines are JSON in a JSON log too.
            log_config=None,
            lifespan="on",
        )
        server = self._server = _Server(config, self.listening)
        if self.stopping:
            return
        failed = f"the HTTP API did not start on {self.api.host}:{self.api.port} (see the log)"
        try:
            await server.serve()
        except SystemExit:
            # uvicorn exits the process when it cannot bind; here it is one service's failure.
            raise GatewayFailed(failed) from None
        if not server.started and not self.stopping:
            # The app's start-up failed (NATS not reachable), and uvicorn logged why.
            raise GatewayFailed(failed)

    def on_stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers (the lifecycle has them), saying when it listens."""

    def __init__(self, config: uvicorn.Config, listening: asyncio.Event) -> None:
        super().__init__(config)
        self._listening = listening
        #: (host, port) the socket is bound to, once it listens.
        self.address: tuple[str, int] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            bound = self.servers[0].sockets[0].getsockname()
            self.address = (str(bound[0]), int(bound[1]))
            self._listening.set()
