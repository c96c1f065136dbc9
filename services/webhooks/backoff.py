"""How long to wait before the next attempt: exponential backoff with full jitter (pure)."""

from __future__ import annotations

import random


def retry_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based).

    Uniform in [0, min(cap, base * 2**(attempt-1))]: the "full jitter" of the AWS architecture
    blog's comparison, which spreads retries of receivers that failed at the same moment.
    """
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(0, ceiling)
