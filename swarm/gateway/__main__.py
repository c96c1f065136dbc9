"""`python -m swarm.gateway`: serve the HTTP API with uvicorn (`SWARM_API_HOST`/`_PORT`)."""

from __future__ import annotations

from swarm.gateway.settings import GatewaySettings
from swarm.kernel.logs import configure_logging
from swarm.kernel.settings import Settings, load


def main() -> None:
    settings = load(GatewaySettings, "gateway setting")
    common = load(Settings, "setting")
    configure_logging(common.log_level, common.log_format)
    try:
        # Before the web stack is imported (seconds on a loaded machine): a gateway that will
        # refuse to serve says so at once.
        settings.bearer_token()
    except (ValueError, OSError) as exc:
        # No token (or an unreadable token file): refuse to serve an open API, in one line.
        raise SystemExit(f"swarm.gateway: {exc}") from None

    import uvicorn

    from swarm.gateway.app import create_app
    from swarm.gateway.protocol import ProblemH11Protocol

    app = create_app(common, settings)
    # Proxy headers are not trusted: the API is reached directly, not through a proxy we know.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        proxy_headers=False,
        # h11, with a parser's refusals answered as problem documents like every other error.
        http=ProblemH11Protocol,
        log_level=common.log_level.lower(),
    )


if __name__ == "__main__":
    main()
