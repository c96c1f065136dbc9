"""Swarm's HTTP API (FastAPI): the CLI's commands and queries over HTTP, with bearer-token auth,
server-sent events for the live event log, and every error as an RFC 9457 problem document.

Run it with `python -m swarm.gateway` (`swarm up` does); build it with `create_app`.
"""

from swarm.gateway.app import create_app
from swarm.gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app"]
