"""bench/surfaces_webhooks.py runs end to end on a tiny workload and writes its rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.bench_report import run_bench_report


@pytest.mark.timeout(90)
def test_webhook_bench_writes_positive_results(tmp_path: Path) -> None:
    stdout, report = run_bench_report(
        "surfaces_webhooks.py", "--events", "60", "--repeats", "1", tmp_path=tmp_path, timeout=80
    )
    assert "webhook deliveries (dispatcher)" in stdout
    assert report["params"] == {"events": 60, "window": 32, "repeats": 1}
    rows = {r["case"]: r for r in report["results"]}
    assert set(rows) == {
        "webhook deliveries (dispatcher)",
        "raw: httpx POSTs, one-connection clients",
        "raw: httpx POSTs, one shared client",
    }
    assert all(r["per_s"] > 0 and len(r["runs"]) == 1 for r in rows.values())
    dispatcher = rows["webhook deliveries (dispatcher)"]
    assert dispatcher["ratio"] > 0
    assert dispatcher["raw_per_s"] == rows["raw: httpx POSTs, one-connection clients"]["per_s"]
