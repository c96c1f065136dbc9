"""Which delivery targets are allowed: refuse non-public addresses (server-side request forgery).

The address classification is `swarm.kernel.addresses`, shared with the agents' `net` host call.

The host is resolved when delivering, not when subscribing, because what a name points to can
change. Every address it resolves to must be public; one private answer refuses the target.

Known gap: httpx resolves the name again when it connects, so a DNS server that answers
differently within the check's cache time (DNS rebinding) could still steer a request inside.
Closing that needs connecting to the checked address itself (a custom transport); a firewall
rule for the dispatcher's egress is the sturdier guard in production.
"""

from __future__ import annotations

import asyncio
import socket
import time
from urllib.parse import urlsplit

from swarm.kernel.addresses import (
    IpAddress,
    addresses_of,
    first_non_public,
    literal_address,
    non_public_reason,
)

__all__ = ["TargetGuard", "TargetUnresolved", "non_public_reason"]


class TargetGuard:
    """Resolves a URL's host and says why it is refused (None: allowed)."""

    def __init__(self, *, allow_private: bool, cache_s: float = 5.0) -> None:
        self.allow_private = allow_private
        self.cache_s = cache_s
        self._cache: dict[tuple[str, int], tuple[float, list[IpAddress]]] = {}

    async def refusal(self, url: str) -> str | None:
        if self.allow_private:
            return None
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:
            # Not refused: a name that does not resolve now may later; the attempt fails instead.
            raise TargetUnresolved(f"cannot resolve {host}: {exc}") from exc
        hit = first_non_public(addresses)
        if hit is not None:
            address, reason = hit
            return (
                f"refused: {host} resolves to {address} ({reason}); "
                "set SWARM_WEBHOOKS_ALLOW_PRIVATE=true to allow such targets"
            )
        return None

    async def _resolve(self, host: str, port: int) -> list[IpAddress]:
        literal = literal_address(host)
        if literal is not None:
            return [literal]
        now = time.monotonic()
        cached = self._cache.get((host, port))
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = addresses_of(infos)
        self._cache[(host, port)] = (now, addresses)
        return addresses


class TargetUnresolved(Exception):
    """The host did not resolve; a failed attempt, retried like any other."""
