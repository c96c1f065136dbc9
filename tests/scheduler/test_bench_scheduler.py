"""bench/scheduler.py runs end to end on a tiny workload and writes a complete report."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.bench_report import run_bench_report


@pytest.mark.timeout(60)
def test_scheduler_bench_writes_a_report(tmp_path: Path) -> None:
    stdout, report = run_bench_report(
        "scheduler.py",
        *("--pools", "20", "--requests", "200", "--repeats", "1", "--streaming-events", "0"),
        tmp_path=tmp_path,
        timeout=50,
    )
    assert "first-fit (baseline)" in stdout
    assert report["params"] == {
        "pools": 20,
        "requests": 200,
        "seed": 7,
        "repeats": 1,
        "energy_weights": [1.0, 4.0],
    }
    results = report["results"]
    assert set(results) == {
        "first-fit (baseline)",
        "market, price only (λ=0)",
        "market, energy-aware (λ=1)",
        "market, energy-aware (λ=4)",
        "market via planner",
    }
    for name, r in results.items():
        assert r["placed"] + r["waiting"] == 200, name
        assert r["placed"] > 0, name
        assert r["placements_per_s"] > 0, name
        assert 0 < r["utilisation"] <= 1, name
        assert r["energy"] > 0, name
        assert r["price"] > 0, name
    # The energy-aware market uses less energy than price-only placement on the same workload.
    saved = report["energy_saved_vs_price_only"]
    assert set(saved) == {"1", "4"}
    assert saved["4"]["energy_saved"] > 0
    assert report["streaming"] is None


@pytest.mark.timeout(60)
async def test_scheduler_intake_bench_compares_both_paths_on_the_same_events() -> None:
    """Both paths fold the same history into the same view (the bench raises otherwise)."""
    import importlib

    module = importlib.import_module("bench.scheduler_intake")
    plain, faust = await module.run(600, batch=100, repeats=1)
    assert plain["events"] == faust["events"] >= 600
    assert plain["events_per_s"] > 0
    assert faust["events_per_s"] > 0
    assert faust["ratio"] == pytest.approx(faust["events_per_s"] / plain["events_per_s"], rel=0.01)
    assert faust["recover_s"] > 0
