"""bench/surfaces_webhooks.py runs end to end on a tiny workload and writes its rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers.bench import run_bench

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "surfaces_webhooks.py"


@pytest.mark.timeout(90)
def test_webhook_bench_writes_positive_results(tmp_path: Path) -> None:
    out = tmp_path / "surfaces_webhooks.json"
    result = run_bench(
        [sys.executable, str(BENCH), "--events", "60", "--repeats", "1", "--json", str(out)],
        cwd=tmp_path,
        timeout=80,
    )
    assert "webhook deliveries (dispatcher)" in result.stdout
    report = json.loads(out.read_text())
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
