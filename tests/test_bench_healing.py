"""bench/healing.py runs end to end on a tiny workload and writes a complete report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(60)
def test_healing_bench_writes_positive_results(tmp_path: Path) -> None:
    out = tmp_path / "healing.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "healing.py"), "--agents", "200", "--repeats", "2",
         "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "vs baseline" in result.stdout
    report = json.loads(out.read_text())
    assert report["params"] == {"agents": 200, "repeats": 2}
    cases = {r["case"] for r in report["results"]}
    assert "reconcile scan (baseline)" in cases
    assert "anomaly_detected (+ trust)" in cases
    for r in report["results"]:
        assert r["over_baseline"] > 0
        assert r.get("ms", 0) > 0 or r.get("events_per_s", 0) > 0
