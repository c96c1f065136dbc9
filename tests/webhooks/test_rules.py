"""The dispatcher's pure rules: which addresses are refused, how long to back off."""

from __future__ import annotations

import ipaddress
import random

import pytest

from services.webhooks.backoff import retry_delay
from services.webhooks.config import WebhookSettings
from services.webhooks.targets import TargetGuard, non_public_reason


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata endpoints live here
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6 is judged as the IPv4 address
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1: Python calls it global
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of the cloud metadata address
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b::c0a8:101", "private"),  # NAT64 of 192.168.1.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo
        ("100.64.0.1", "not globally routable"),  # carrier-grade NAT
    ],
)
def test_non_public_addresses_are_named(address: str, reason: str) -> None:
    assert non_public_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "address",
    [
        "93.184.215.14",
        "2606:4700::6810:85e5",
        "8.8.8.8",
        "2002:808:808::1",  # 6to4 of a public address
        "64:ff9b::808:808",  # NAT64 of a public address
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert non_public_reason(ipaddress.ip_address(address)) is None


async def test_the_guard_resolves_names_and_refuses_private_answers() -> None:
    guard = TargetGuard(allow_private=False)
    refusal = await guard.refusal("http://localhost:8080/hook")
    assert refusal is not None
    assert "localhost resolves to" in refusal
    assert "SWARM_WEBHOOKS_ALLOW_PRIVATE" in refusal
    assert await guard.refusal("https://93.184.215.14/hook") is None
    assert await TargetGuard(allow_private=True).refusal("http://127.0.0.1/") is None


def test_full_jitter_backoff_stays_under_the_doubling_ceiling() -> None:
    rng = random.Random(7)
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 30.0)):
        delays = [retry_delay(attempt, base=0.5, cap=30.0, rng=rng) for _ in range(500)]
        assert all(0 <= d <= ceiling for d in delays)
        # Spread over the whole range, not clustered at the ceiling (that is the jitter).
        assert min(delays) < ceiling * 0.1
        assert max(delays) > ceiling * 0.9


def test_ack_wait_must_cover_an_attempt_and_a_backoff() -> None:
    with pytest.raises(ValueError, match="ack_wait_s"):
        WebhookSettings(ack_wait_s=5, timeout_s=10)
