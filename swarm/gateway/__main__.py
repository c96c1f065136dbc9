"""`python -m swarm.gateway`: serve the HTTP API (`SWARM_API_HOST`/`_PORT`) until SIGTERM or
SIGINT, as every Swarm service runs (`swarm.kernel.lifecycle`)."""

from __future__ import annotations

import asyncio

from swarm.client.lifecycle import configure_logging, run_until_signalled
from swarm.client.settings import Settings, load
from swarm.gateway.server import GatewayFailed, GatewayService
from swarm.gateway.settings import GatewaySettings


def main() -> None:
    settings = load(GatewaySettings, "gateway setting")
    common = load(Settings, "setting")
    configure_logging(common.log_level, common.log_format)
    try:
        asyncio.run(run_until_signalled(GatewayService(common, settings)))
    except GatewayFailed as exc:
        raise SystemExit(f"swarm.gateway: {exc}") from None


if __name__ == "__main__":
    main()
