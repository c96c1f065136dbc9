"""Which IP addresses are public: the server-side request forgery rule shared by every egress.

The webhook dispatcher (services/webhooks) and the agents' `net` host call (runtime/net.py) both
refuse to reach loopback, private, link-local, multicast, unspecified and reserved addresses
unless their operator allows it; the classification is pure and lives here, once.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

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


def literal_address(host: str) -> IpAddress | None:
    """`host` as an IP address if it is one (brackets of an IPv6 URL host allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def addresses_of(infos: Iterable[tuple[Any, ...]]) -> list[IpAddress]:
    """The addresses of `getaddrinfo` results (an IPv6 zone suffix `%eth0` is dropped)."""
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def resolve(host: str, port: int) -> list[IpAddress]:
    """Every address `host` resolves to, blocking (OSError when it does not resolve)."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    return addresses_of(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))


def first_non_public(addresses: Iterable[IpAddress]) -> tuple[IpAddress, str] | None:
    """The first address that is not public and why; None when all are public.

    One private answer refuses the name: which answer a client will connect to is not ours to
    choose.
    """
    for address in addresses:
        reason = non_public_reason(address)
        if reason is not None:
            return address, reason
    return None
