"""`python -m swarm.gateway`: serve the HTTP API with uvicorn (`SWARM_API_HOST`/`_PORT`)."""

from __future__ import annotations

import uvicorn

from swarm.gateway.app import create_app
from swarm.gateway.settings import GatewaySettings
from swarm.kernel.settings import Settings


def main() -> None:
    settings = GatewaySettings()
    app = create_app(Settings(), settings)
    # Proxy headers are not trusted: the API is reached directly, not through a proxy we know.
    uvicorn.run(app, host=settings.host, port=settings.port, proxy_headers=False, log_level="info")


if __name__ == "__main__":
    main()
