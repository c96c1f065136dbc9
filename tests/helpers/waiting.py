"""Polling for a condition the code under test reaches in its own time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    within: float = 30.0,
    what: str = "condition",
    *,
    interval: float = 0.02,
) -> None:
    """Poll `check` every `interval` seconds until it holds; TimeoutError naming `what` after
    `within` seconds. The fault scenarios record that message as a violation in the chaos
    bench's report, so its wording is kept stable."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise TimeoutError(f"{what}: not within {within:g}s")
        await asyncio.sleep(interval)


async def true(value: bool) -> bool:
    """`value` as an awaitable, for `wait_until` on a plain condition."""
    return value
