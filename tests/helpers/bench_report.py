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
    (it must exit 0); what it printed, and the report."""
    out = tmp_path / f"{Path(script).stem}.json"
    result = run_bench(
        [sys.executable, str(ROOT / "bench" / script), *options, "--json", str(out)],
        cwd=tmp_path,
        timeout=timeout,
    )
    return result.stdout, json.loads(out.read_text())
