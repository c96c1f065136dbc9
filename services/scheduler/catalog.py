"""Placement policies by name (`SWARM_SCHEDULER_POLICY`): the market and its baselines."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from services.scheduler.market import FirstFit, Market
from services.scheduler.policies import MostFreeCapacity, Policy, Pricing


def _most_free(pricing: Pricing) -> Policy:
    return MostFreeCapacity()


#: `market` clears by priority, bid, price and energy; `first-fit` and `most-free` are the
#: baselines it is measured against (`bench/scheduler.py`).
POLICIES: Mapping[str, Callable[[Pricing], Policy]] = {
    "market": Market,
    "first-fit": FirstFit,
    "most-free": _most_free,
}


def policy_named(name: str, pricing: Pricing | None = None) -> Policy:
    factory = POLICIES.get(name)
    if factory is None:
        raise ValueError(f"unknown placement policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    return factory(pricing or Pricing())
