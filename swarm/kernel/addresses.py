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

#: NAT64's well-known prefix (RFC 6052): a translator on the path delivers `64:ff9b::a.b.c.d`
#: to the IPv4 address a.b.c.d. Python counts the prefix as globally routable.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(address: IpAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to, when it carries one: IPv4-mapped
    (`::ffff:a.b.c.d`), 6to4 (`2002:AABB:CCDD::/48`) or NAT64 (`64:ff9b::a.b.c.d`). Python counts
    6to4 and NAT64 addresses as global whatever they embed, so `2002:7f00:1::` (127.0.0.1) would
    pass as public. (Teredo's 2001::/32 is already not global.)"""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def non_public_reason(address: IpAddress) -> str | None:
    """Why `address` is not a public unicast address, or None when it is. An IPv6 address that
    leads to an IPv4 address (`embedded_ipv4`) is judged as that address."""
    embedded = embedded_ipv4(address)
    if embedded is not None:
        return non_public_reason(embedded)
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
