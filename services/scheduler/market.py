"""The market: pods offer capacity at a price, waiting replicas bid for it, a rule clears them.

**Offers.** Every ready pod offers what is free on it. Its posted price per resource unit
(`UNIT_MB` = 64 MB of memory) rises with its utilisation `u` (the fullest of memory, fuel/s and
slots, counting proposals in flight):

    price(u) = base_price * (1 + slope * u**2)

`base_price` is the pod's label `base-price` when it carries one, else `Pricing.base_price`. An
offer also carries the pod's `energy_cost` per unit (from `pod.register`), its zone and labels.

**Bids.** A replica bids with its agent spec's `placement`: the most it pays per unit
(`max_price`, None = no cap), its priority (`effective_priority`), and hard constraints (every
`node_selector` label on the pod; one of `zones` when given; none of `avoid_zones`).

**Clearing rule** (a sequential posted-price market, greedy by priority then bid):

1. Order the waiting requests by priority (highest first), then bid (highest first, no cap
   counts as the highest), then age (oldest request first).
2. For each request in that order, the feasible offers are the ready pods where it fits
   (memory, fuel/s and one slot, exactly the Hive's capacity check), that satisfy its
   constraints and whose posted price is within its bid.
3. It goes to the feasible offer with the lowest score `price + λ * energy_cost` (λ =
   `SWARM_SCHEDULER_ENERGY_WEIGHT`; 0 is price-only placement), ties to the smallest pod id, and
   pays that pod's posted price per unit. The pod's utilisation and so its price rise before the
   next request clears.
4. A request with no feasible offer stays waiting; the reason says whether it fits nowhere, is
   constrained out, or is priced out (its bid is below the cheapest price it fits at). A waiting
   request of a higher priority than some placed replicas may then preempt them
   (`services/scheduler/preemption.py`).

Rising prices spread load (a filling pod gets dearer), λ trades price for energy, and the
order makes high priority and high bids clear first. The Hive re-checks capacity on every
proposal, so a clearing can never over-commit a pod even if this view is stale.

The book keeps the offers as numpy arrays: one request costs a few vector operations over all
pods and one scalar update of the chosen pod, so 1,000 pods clear thousands of requests per
second (`bench/scheduler.py`). Pure and deterministic: same offers and requests, same result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from services.scheduler.policies import NO_FIT, Choice, Cleared, Need, Offer, Pricing

#: Memory in one priced resource unit.
UNIT_MB = 64
#: Pod label that sets a pod's own base price per unit.
BASE_PRICE_LABEL = "base-price"

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


def units(need: Need) -> float:
    """Priced resource units of one replica (memory in 64 MB units, at least one)."""
    return max(need.memory_mb / UNIT_MB, 1.0)


def _base_price(offer: Offer, pricing: Pricing) -> float:
    text = offer.labels.get(BASE_PRICE_LABEL)
    if text is not None:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value > 0:
            return value
    return pricing.base_price


class Book:
    """The offers of one clearing as arrays, updated in place as requests take capacity."""

    def __init__(self, offers: Sequence[Offer], pricing: Pricing) -> None:
        ordered = sorted(offers, key=lambda o: o.pod_id)
        self.pricing = pricing
        self.offers = ordered
        self.ids = [o.pod_id for o in ordered]
        self.ready: Bools = np.array([o.ready for o in ordered], dtype=np.bool_)
        self.free_memory: Ints = np.array([o.free_memory_mb for o in ordered], dtype=np.int64)
        self.free_fuel: Ints = np.array([o.free_fuel_per_s for o in ordered], dtype=np.int64)
        self.free_slots: Ints = np.array([o.free_slots for o in ordered], dtype=np.int64)
        # A capacity of 0 (unknown) counts as empty: utilisation 0.
        self._capacity: Floats = np.array(
            [
                [
                    max(o.capacity_memory_mb, 0),
                    max(o.capacity_fuel_per_s, 0),
                    max(o.capacity_slots, 0),
                ]
                for o in ordered
            ],
            dtype=np.float64,
        ).reshape(len(ordered), 3)
        self.base: Floats = np.array([_base_price(o, pricing) for o in ordered], dtype=np.float64)
        self.energy: Floats = np.array([o.energy_cost for o in ordered], dtype=np.float64)
        self.zones = [o.zone for o in ordered]
        self.price: Floats = np.zeros(len(ordered), dtype=np.float64)
        for i in range(len(ordered)):
            self._reprice(i)
        self.score: Floats = self.price + pricing.energy_weight * self.energy
        self._masks: dict[tuple[object, ...], Bools] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def utilisation(self, i: int) -> float:
        cap = self._capacity[i]
        free = (self.free_memory[i], self.free_fuel[i], self.free_slots[i])
        used = [1.0 - f / c for f, c in zip(free, cap, strict=True) if c > 0]
        return min(max(max(used, default=0.0), 0.0), 1.0)

    def _reprice(self, i: int) -> None:
        u = self.utilisation(i)
        self.price[i] = self.base[i] * (1.0 + self.pricing.slope * u * u)

    def allowed(self, need: Need) -> Bools:
        """Pods that satisfy the request's hard constraints (cached per constraint set)."""
        key = (need.node_selector, need.zones, need.avoid_zones)
        mask = self._masks.get(key)
        if mask is None:
            selector = dict(need.node_selector)
            mask = np.array(
                [
                    all(o.labels.get(k) == v for k, v in selector.items())
                    and (not need.zones or o.zone in need.zones)
                    and o.zone not in need.avoid_zones
                    for o in self.offers
                ],
                dtype=np.bool_,
            ).reshape(len(self.offers))
            self._masks[key] = mask
        return mask

    def fitting(self, need: Need) -> Bools:
        """Ready pods with room for the request (the Hive's capacity check), constraints met."""
        fits: Bools = (
            self.ready
            & (self.free_memory >= need.memory_mb)
            & (self.free_fuel >= need.fuel_per_s)
            & (self.free_slots >= 1)
            & self.allowed(need)
        )
        return fits

    def take(self, i: int, need: Need) -> None:
        self.free_memory[i] -= need.memory_mb
        self.free_fuel[i] -= need.fuel_per_s
        self.free_slots[i] -= 1
        self._reprice(i)
        self.score[i] = self.price[i] + self.pricing.energy_weight * self.energy[i]


@dataclass(frozen=True, slots=True)
class Market:
    """The market clearing rule as a placement policy (`SWARM_SCHEDULER_POLICY=market`)."""

    pricing: Pricing = field(default_factory=Pricing)
    name: str = "market"

    def choose(self, need: Need, pods: Sequence[Offer]) -> Choice | None:
        return self.clear([need], pods, 1)[0].choice

    def clear(self, needs: Sequence[Need], pods: Sequence[Offer], limit: int) -> list[Cleared]:
        """Clear `needs` against `pods`: at most `limit` placements, in clearing order."""
        ordered = sorted(needs, key=_clearing_order)
        return _clear_in_order(Book(pods, self.pricing), ordered, limit, self._clear_one)

    def _clear_one(self, book: Book, need: Need) -> Cleared:
        fits = book.fitting(need)
        if not fits.any():
            return _fits_nowhere(book, need)
        feasible = fits if need.max_price is None else fits & (book.price <= need.max_price)
        if not feasible.any():
            cheapest = float(book.price[fits].min())
            return Cleared(
                need,
                None,
                reason=f"priced out: bid {need.max_price:.3f}/unit < cheapest fitting "
                f"{cheapest:.3f}/unit",
                wait="priced_out",
            )
        i = int(np.where(feasible, book.score, np.inf).argmin())
        price, energy, u = float(book.price[i]), float(book.energy[i]), book.utilisation(i)
        bid = "no cap" if need.max_price is None else f"bid {need.max_price:.3f}"
        reason = (
            f"market: {book.ids[i]} at {price:.3f}/unit (utilisation {u:.2f}) + "
            f"λ {self.pricing.energy_weight:g} x energy {energy:.3f} = {book.score[i]:.3f}, "
            f"lowest of {int(feasible.sum())} feasible offers; {bid}; priority {need.priority}"
        )
        book.take(i, need)
        n = units(need)
        return Cleared(need, Choice(book.ids[i], reason), price * n, energy * n)


@dataclass(frozen=True, slots=True)
class FirstFit:
    """Baseline: the first ready pod (by pod id) where the replica fits and its constraints hold.

    No prices and no energy: the comparison point for the market (`bench/scheduler.py`).
    """

    pricing: Pricing = field(default_factory=Pricing)
    name: str = "first-fit"

    def choose(self, need: Need, pods: Sequence[Offer]) -> Choice | None:
        return self.clear([need], pods, 1)[0].choice

    def clear(self, needs: Sequence[Need], pods: Sequence[Offer], limit: int) -> list[Cleared]:
        ordered = sorted(needs, key=lambda n: (-n.priority, n.seq))
        return _clear_in_order(Book(pods, self.pricing), ordered, limit, self._clear_one)

    @staticmethod
    def _clear_one(book: Book, need: Need) -> Cleared:
        fits = book.fitting(need)
        if not fits.any():
            return _fits_nowhere(book, need)
        i = int(fits.argmax())
        price, energy = float(book.price[i]), float(book.energy[i])
        book.take(i, need)
        choice = Choice(book.ids[i], f"first fit: {book.ids[i]} is the first pod with room")
        n = units(need)
        return Cleared(need, choice, price * n, energy * n)


def _clearing_order(need: Need) -> tuple[int, float, int]:
    bid = math.inf if need.max_price is None else need.max_price
    return (-need.priority, -bid, need.seq)


def _clear_in_order(
    book: Book, needs: Sequence[Need], limit: int, clear_one: Callable[[Book, Need], Cleared]
) -> list[Cleared]:
    """Clear `needs` one after another in the order given, each against what the earlier ones
    left in `book`, until `limit` are placed."""
    out: list[Cleared] = []
    placed = 0
    for need in needs:
        if placed >= limit:
            break
        cleared = clear_one(book, need)
        if cleared.choice is not None:
            placed += 1
        out.append(cleared)
    return out


def _fits_nowhere(book: Book, need: Need) -> Cleared:
    """Why a request that fits on no pod waits: no ready pod meeting its constraints has room,
    or no pod meets them at all."""
    if book.allowed(need).any():
        return Cleared(need, None, reason=NO_FIT, wait="no_fit")
    return Cleared(need, None, reason="no pod meets its constraints", wait="constrained")


def market_rows(offers: Sequence[Offer], pricing: Pricing) -> list[dict[str, object]]:
    """The offers as `swarm market` shows them: free capacity, posted price, energy."""
    book = Book(offers, pricing)
    return [
        {
            "pod_id": pod_id,
            "ready": bool(book.ready[i]),
            "zone": book.zones[i],
            "labels": dict(book.offers[i].labels),
            "free": {
                "memory_mb": int(book.free_memory[i]),
                "fuel_per_s": int(book.free_fuel[i]),
                "slots": int(book.free_slots[i]),
            },
            "utilisation": round(book.utilisation(i), 4),
            "price_per_unit": round(float(book.price[i]), 4),
            "energy_per_unit": float(book.energy[i]),
            "score": round(float(book.score[i]), 4),
        }
        for i, pod_id in enumerate(book.ids)
    ]
