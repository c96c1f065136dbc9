"""bench/agents.py runs end to end in its quick mode and reports what it measured, nothing more.

`--quick` skips the component build (about 20 s), so only the echo module's rows are measured:
its deploys through a real Hive, the scheduler and a pod process. The component rows are
reported as skipped, never filled in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.bench_report import run_bench_report


@pytest.mark.timeout(300)
def test_agents_bench_quick_measures_the_baseline_and_skips_the_component(tmp_path: Path) -> None:
    stdout, report = run_bench_report(
        "agents.py", "--quick", "--timeout", "120", tmp_path=tmp_path, timeout=280
    )
    assert "component rows skipped" in stdout

    assert report["params"]["quick"] is True
    assert report["component_skipped"]
    assert "build" not in report
    assert "component_steps" not in report
    assert "component" not in report["deploys"]
    assert "met" not in report
    for step in ("compile_optimized", "load_cached", "instantiate", "first_call"):
        assert report["core_steps"][step]["wall_s"] >= 0
    core = report["deploys"]["core"]
    for deploy in ("first_deploy", "redeploy"):
        assert 0 < core[deploy]["wall_s"] < 120
        assert core[deploy]["pod_cpu_s"] >= 0
