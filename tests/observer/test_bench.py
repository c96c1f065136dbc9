"""bench/observer.py runs end to end in its quick mode (pure core, load ramp and StreamApp runner)
and writes a complete report."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.bench_report import run_bench_report


# Beside four busy loops its --quick run took over 110 s (2 cores): generous, it is a smoke test.
@pytest.mark.timeout(300)
def test_observer_bench_writes_quality_and_throughput(tmp_path: Path) -> None:
    stdout, report = run_bench_report("observer.py", "--quick", tmp_path=tmp_path, timeout=280)
    assert "aggregate + detect" in stdout
    assert "Load ramp" in stdout

    assert report["workload"]["agents"] == 12
    quality = report["quality"]
    assert set(quality) == {"spike", "level_shift", "drift", "loop", "all"}
    overall = quality["all"]
    assert overall["incidents"] >= 1
    assert 0 <= overall["precision"] <= 1
    assert 0 <= overall["recall"] <= 1
    assert overall["detected"] <= overall["incidents"]
    # The load ramp: agents busy, not broken, and two machine-wide slowdowns.
    ramp = report["load_ramp"]
    assert ramp["workload"]["agents"] == 20
    assert ramp["samples"] == 20 * 600
    # The workload is seeded, so these are exact: nothing critical, each slowdown recognised as
    # the machine's, and no machine finding outside them.
    assert ramp["critical_per_hour"] == 0
    assert [e["scope"] for e in ramp["episodes"]] == ["pod", "cluster"]
    assert all(e["findings"] >= 1 for e in ramp["episodes"]), ramp["episodes"]
    assert ramp["machine_findings_outside_episodes"] == 0
    targets = report["targets"]
    assert set(targets) == {
        "false_critical_per_hour",
        "drift_recall",
        "drift_median_delay_s",
        "precision",
        "f1",
    }
    assert all(isinstance(t["met"], bool) for t in targets.values())
    assert targets["drift_recall"]["value"] == quality["drift"]["recall"]
    throughput = report["throughput"]
    assert throughput["samples"] == 12 * 700
    assert throughput["detect_samples_per_s"] > 0
    assert throughput["aggregate_only_samples_per_s"] > 0
    # The StreamApp runner on a nats-server, against the core over a plain replay of the same
    # stream; the bench itself checks that both ended with the same windows.
    runner = throughput["runner"]
    assert runner["messages"] == 2 * 700  # 12 agents, 10 per pod
    assert runner["windows_closed"] > 12 * 100
    assert runner["app_messages_per_s"] > 0
    assert runner["plain_messages_per_s"] > 0
    assert runner["commits"] >= 1
