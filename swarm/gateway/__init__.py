"""Swarm's HTTP API (FastAPI): the CLI's commands and queries over HTTP, with bearer-token auth,
server-sent events for the live event log, and every error as an RFC 9457 problem document.

A token is the owner's (the API acts as itself) or a user's (`swarm user token NAME`): the API
then acts as that user, signing its commands with the user's key so the Hive applies the user's
roles, and limits its reads to the user's namespaces (`auth`, `access`, `service`).

Run it with `python -m swarm.gateway` (`swarm up` does); build it with `create_app`.

`create_app` is imported on first use (PEP 562): the web stack takes seconds to import on a
loaded machine, and `python -m swarm.gateway` checks its settings before it needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from swarm.gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from swarm.gateway.app import create_app

__all__ = ["GatewaySettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from swarm.gateway.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
