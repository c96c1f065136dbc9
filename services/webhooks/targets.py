"""Which delivery targets are allowed: refuse non-public addresses (server-side request forgery).

The host is resolved when delivering, not when subscribing, because what a name points to can
change. Every address it resolves to must be public; one private answer refuses the target.

Known gap: httpx resolves the name again when it connects, so a DNS server that answers
differently within the check's cache time (DNS rebinding) could still steer a request inside.
Closing that needs connecting to the checked address itself (a custom transport); a firewall
rule for the dispatcher's egress is the sturdier guard in production.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from urllib.parse import urlsplit

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def non_public_reason(address: IpAddress) -> str | None:
    """Why `address` is not a public unicast address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return non_public_reason(address.ipv4_mapped)
    checks = (
        # The narrower names first: link-local and unspecified ranges are "private" too.
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    )
    for name, hit in checks:
        if hit:
            return name
    return None


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
        for address in addresses:
            reason = non_public_reason(address)
            if reason is not None:
                return (
                    f"refused: {host} resolves to {address} ({reason}); "
                    "set SWARM_WEBHOOKS_ALLOW_PRIVATE=true to allow such targets"
                )
        return None

    async def _resolve(self, host: str, port: int) -> list[IpAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        now = time.monotonic()
        cached = self._cache.get((host, port))
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        self._cache[(host, port)] = (now, addresses)
        return addresses


class TargetUnresolved(Exception):
    """The host did not resolve; a failed attempt, retried like any other."""
