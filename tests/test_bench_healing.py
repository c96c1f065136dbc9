"""bench/healing.py runs end to end on a tiny workload and writes a complete report."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.bench_report import run_bench_report


@pytest.mark.timeout(60)
def test_healing_bench_writes_positive_results(tmp_path: Path) -> None:
    stdout, report = run_bench_report(
        "healing.py", "--agents", "200", "--repeats", "2", tmp_path=tmp_path, timeout=50
    )
    assert "vs baseline" in stdout
    assert report["params"] == {"agents": 200, "repeats": 2}
    cases = {r["case"] for r in report["results"]}
    assert "reconcile scan (baseline)" in cases
    assert "anomaly_detected (+ trust)" in cases
    for r in report["results"]:
        assert r["over_baseline"] > 0
        assert r.get("ms", 0) > 0 or r.get("events_per_s", 0) > 0
