"""A benchmark's smoke run: its script run as a user does, and the JSON report it wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.helpers.bench import ROOT, run_bench


def run_bench_report(
    script: str, *options: str, tmp_path: Path, timeout: float
) -> tuple[str, dict[str, Any]]:
    """Run `bench/<script>` with `options` in `tmp_path`, its report written there with `--json`
    (it must exit 0, and the report start as every bench's does); what it printed, and the
    report."""
    name = Path(script).stem
    out = tmp_path / f"{name}.json"
    result = run_bench(
        [sys.executable, str(ROOT / "bench" / script), *options, "--json", str(out)],
        cwd=tmp_path,
        timeout=timeout,
    )
    report: dict[str, Any] = json.loads(out.read_text())
    # What bench/_common.py's `report` starts every report with.
    assert report["benchmark"] == name
    assert report["machine"]["cpu_count"] >= 1
    assert report["machine"]["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    return result.stdout, report
