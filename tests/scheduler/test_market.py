"""The market's clearing rule on hand-made offers: prices rise with utilisation, priority and
bid clear first, λ trades price for energy, constraints and bid caps hold, first fit is kept."""

from __future__ import annotations

import pytest

from services.scheduler.catalog import policy_named
from services.scheduler.market import Book, FirstFit, Market, market_rows
from services.scheduler.policies import Need, Offer, Pricing


def offer(
    pod_id: str,
    memory: int = 1024,
    *,
    used: int = 0,
    energy: float = 1.0,
    price: float | None = None,
    zone: str = "default",
    labels: dict[str, str] | None = None,
    slots: int = 100,
) -> Offer:
    tags = dict(labels or {})
    if price is not None:
        tags["base-price"] = str(price)
    return Offer(
        pod_id, True, memory - used, 10**9, slots, zone, tags, energy, memory, 10**9, slots
    )


def need(name: str = "a-0", memory: int = 64, seq: int = 1, **kw: object) -> Need:
    return Need(name.split("-")[0], name, memory, 1, seq=seq, **kw)  # type: ignore[arg-type]


def test_price_rises_with_utilisation() -> None:
    book = Book([offer("empty"), offer("half", used=512), offer("full", used=1024)], Pricing())
    prices = dict(zip(book.ids, book.price.tolist(), strict=True))
    assert prices == {"empty": 1.0, "half": 1.0 * (1 + 3 * 0.25), "full": 4.0}


def test_each_request_takes_the_lowest_price_and_raises_it() -> None:
    market = Market(Pricing(energy_weight=0))
    cleared = market.clear(
        [need(f"a-{i}", 256, seq=i) for i in range(4)], [offer("p1"), offer("p2")], 10
    )
    # Alternates: each placement makes its pod dearer than the other.
    assert [c.choice.pod_id for c in cleared if c.choice] == ["p1", "p2", "p1", "p2"]
    assert cleared[0].price == pytest.approx(4.0)  # 1.0 per unit x 4 units of 64 MB
    assert "lowest of 2 feasible offers" in (cleared[0].choice.reason if cleared[0].choice else "")


def test_energy_weight_trades_price_for_energy() -> None:
    pods = [offer("cheap-dirty", price=1.0, energy=2.0), offer("green", price=1.5, energy=0.2)]
    price_only = Market(Pricing(energy_weight=0)).clear([need()], pods, 1)[0]
    green = Market(Pricing(energy_weight=1)).clear([need()], pods, 1)[0]
    assert price_only.choice is not None
    assert price_only.choice.pod_id == "cheap-dirty"
    assert green.choice is not None
    assert green.choice.pod_id == "green"
    assert green.energy < price_only.energy


def test_priority_then_bid_then_age_clear_first() -> None:
    one_slot = [offer("only", slots=1)]
    needs = [
        need("old-0", seq=1),
        need("rich-0", seq=3, max_price=50.0),
        need("vip-0", seq=4, priority=10, max_price=2.0),
        need("mid-0", seq=2, max_price=5.0),
    ]
    cleared = Market().clear(needs, one_slot, 10)
    assert [c.need.replica_id for c in cleared] == ["vip-0", "old-0", "rich-0", "mid-0"]
    assert [c.need.replica_id for c in cleared if c.choice] == ["vip-0"]
    assert all(c.reason == "fits on no ready pod" for c in cleared[1:])


def test_a_bid_below_every_fitting_price_waits_priced_out() -> None:
    cleared = Market().clear([need(max_price=0.5)], [offer("p1", price=1.0)], 1)[0]
    assert cleared.choice is None
    assert cleared.reason.startswith("priced out: bid 0.500/unit < cheapest fitting 1.000/unit")


def test_constraints_are_hard() -> None:
    pods = [
        offer("a", zone="eu", labels={"gpu": "yes"}),
        offer("b", zone="us", labels={"gpu": "yes"}, price=0.1),
        offer("c", zone="eu", price=0.1),
    ]
    gpu_eu = need(node_selector=(("gpu", "yes"),), zones=("eu",))
    assert Market().clear([gpu_eu], pods, 1)[0].choice.pod_id == "a"  # type: ignore[union-attr]
    not_us = need(avoid_zones=("us",))
    assert Market().clear([not_us], pods, 1)[0].choice.pod_id == "c"  # type: ignore[union-attr]
    none = Market().clear([need(node_selector=(("tpu", "yes"),))], pods, 1)[0]
    assert none.choice is None
    assert none.reason == "no pod meets its constraints"


def test_never_more_than_free_and_limit_respected() -> None:
    cleared = Market().clear([need(f"a-{i}", 300, seq=i) for i in range(10)], [offer("p1")], 2)
    assert len([c for c in cleared if c.choice]) == 2
    cleared = Market().clear([need(f"a-{i}", 300, seq=i) for i in range(10)], [offer("p1")], 10)
    assert len([c for c in cleared if c.choice]) == 3  # 3 x 300 <= 1024 < 4 x 300


def test_first_fit_takes_the_first_pod_with_room_in_id_order() -> None:
    pods = [offer("p2", price=0.1, energy=0.1), offer("p1", used=1000), offer("p3")]
    cleared = FirstFit().clear([need(memory=64)], pods, 1)[0]
    assert cleared.choice is not None
    assert cleared.choice.pod_id == "p2"
    assert policy_named("first-fit").name == "first-fit"
    assert policy_named("market").name == "market"


def test_market_rows_show_free_price_and_energy() -> None:
    rows = market_rows([offer("p1", used=512, energy=0.3)], Pricing())
    assert rows[0]["free"] == {"memory_mb": 512, "fuel_per_s": 10**9, "slots": 100}
    assert rows[0]["price_per_unit"] == pytest.approx(1.75)
    assert rows[0]["energy_per_unit"] == 0.3
