"""The FastAPI application: `create_app(settings)`.

With `log` given (tests, or an embedding process) the app uses that connection; otherwise it
connects to NATS at start-up (`SWARM_NATS_URL`) and closes the connection at shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from swarm.client.eventlog import EventLog
from swarm.client.settings import Settings
from swarm.gateway import problems
from swarm.gateway.guard import RequestGuard
from swarm.gateway.problems import Problem
from swarm.gateway.routes import (
    agents,
    behaviour,
    commands,
    events,
    health,
    namespaces,
    reads,
    tasks,
    timeline,
    webhooks,
)
from swarm.gateway.service import Gateway
from swarm.gateway.settings import GatewaySettings

API_VERSION = "1.0.0"
DESCRIPTION = """\
Deploy and manage Swarm's agents over HTTP: the same commands and queries as the `swarm` CLI.

Every `/v1` route needs `Authorization: Bearer <token>`, checked before the request's body is
read: the owner's token (`swarm up` writes it to `<data dir>/api-token`), or a user's
(`swarm user token NAME`, `swarm_…`), which acts as that user: its commands are signed with the
user's key, so the Hive applies the user's roles (a refusal is a `403` with rule `access`), and
it reads only the namespaces where the user holds a role (`403` elsewhere; what spans every
namespace, such as the event log, needs a role in every namespace). So do this document and the
interactive docs, unless the API serves them publicly (`SWARM_API_PUBLIC_DOCS=true`). Bodies
have a size limit (413 above it), and a JSON body must be UTF-8 JSON the API can encode again
(400 otherwise).
Commands wait for the Hive's outcome unless `?wait=false` (202 with a `Location` to poll).
Every error is an RFC 9457 problem document (`application/problem+json`, schema `Problem`).
"""


def create_app(
    settings: Settings | None = None,
    gateway_settings: GatewaySettings | None = None,
    *,
    log: EventLog | None = None,
    token: str | None = None,
) -> FastAPI:
    """The API over `log`, or over a connection to `settings.nats_url` opened at start-up."""
    swarm_settings = settings or Settings()
    api_settings = gateway_settings or GatewaySettings()
    authenticator = api_settings.authenticator(token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if log is not None:
            app.state.gateway = Gateway(log, api_settings, database_url=swarm_settings.database_url)
            try:
                yield
            finally:
                await app.state.gateway.close()
            return
        if not swarm_settings.nats_url:
            raise RuntimeError("no NATS to connect to: set SWARM_NATS_URL")
        own = await EventLog.connect(
            swarm_settings.nats_url, swarm_settings, name="swarm-gateway", ensure=False
        )
        gateway = app.state.gateway = Gateway(
            own, api_settings, database_url=swarm_settings.database_url
        )
        try:
            yield
        finally:
            app.state.gateway = None
            await gateway.close()
            await own.close()

    app = FastAPI(
        title="Swarm API",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.authenticator = authenticator
    app.state.gateway = (
        Gateway(log, api_settings, database_url=swarm_settings.database_url)
        if log is not None
        else None
    )
    # Outside the routing: the token (and whom the request acts for) and the body's size and
    # text are judged before FastAPI reads the body (see `guard`).
    app.add_middleware(
        RequestGuard,
        authenticator=authenticator,
        max_body_bytes=api_settings.max_body_bytes,
        public_docs=api_settings.public_docs,
    )
    problems.install(app)
    for module in (
        health,
        agents,
        namespaces,
        reads,
        behaviour,
        tasks,
        commands,
        events,
        timeline,
        webhooks,
    ):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(problem.pop("$defs", {}))
            schemas["Problem"] = problem
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
