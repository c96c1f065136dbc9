"""What every benchmark's report carries, written once: the machine it ran on, when, and how the
report is written and printed.

A benchmark takes `load_average()` when it starts and builds its report from
`report(name, params, load_at_start, ...)`, so every report has the same keys (`benchmark`,
`time`, `machine`, `params`) and the machine part says how busy the cores were over the run:
other processes compete for them, and a figure from a loaded machine is only comparable with its
same-run baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

#: Where reports go unless `--json` says otherwise.
RESULTS = Path(__file__).resolve().parent / "results"
#: Columns of a console that is not a terminal (a log, CI): wide enough for every table.
PIPED_WIDTH = 132


def console(width: int | None = None) -> Console:
    """The terminal's width, or a fixed one when piped, so the tables stay readable in logs."""
    return Console(width=None if sys.stdout.isatty() else (width or PIPED_WIDTH))


def arguments(
    benchmark: str, description: str | None, *, raw: bool = False
) -> argparse.ArgumentParser:
    """A benchmark's command line, with the option every one has: `--json`, where its report goes
    (`bench/results/<benchmark>.json` by default). `raw` keeps the description's line breaks."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter,
    )
    parser.add_argument(
        "--json", type=Path, default=RESULTS / f"{benchmark}.json", help="where to write results"
    )
    return parser


def load_average() -> float:
    """The 1-minute load average now."""
    return os.getloadavg()[0]


def cpu_model() -> str:
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return model


def nats_server_version() -> str:
    """`nats-server --version` of the binary the embedded server runs."""
    from swarm.devstack.embedded import nats_server_binary

    return subprocess.run(
        [str(nats_server_binary()), "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    ).stdout.strip()


def percentile(samples: Sequence[float], q: float) -> float:
    """The `q`-th (0..100) nearest-rank percentile: a value that was measured, also for a handful
    of runs."""
    ordered = sorted(samples)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def paired_ratio(runs: Sequence[float], baseline: Sequence[float]) -> float:
    """The median of each repeat's ratio of a run to its baseline run: the two are adjacent in
    time, so drift in machine load (other processes on the shared cores, CPU frequency) weighs on
    both alike and mostly cancels out."""
    return statistics.median(r / b for r, b in zip(runs, baseline, strict=True))


def machine(load_at_start: float, **extra: Any) -> dict[str, Any]:
    """The machine and how busy it was from `load_at_start` to now; `extra` adds what one
    benchmark depends on (library versions, the store's filesystem)."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_bytes": psutil.virtual_memory().total,
        "load_average_1m_start": round(load_at_start, 2),
        "load_average_1m_end": round(load_average(), 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **extra,
    }


def report(
    benchmark: str, params: Mapping[str, Any], load_at_start: float, **machine_extra: Any
) -> dict[str, Any]:
    """The keys every report starts with; the benchmark adds its results after them."""
    return {
        "benchmark": benchmark,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(load_at_start, **machine_extra),
        "params": dict(params),
    }


def write_report(
    path: Path,
    report: Mapping[str, Any],
    console: Console | None = None,
    *,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write `report` as indented JSON to `path`, creating its folder, and say where (with the
    run's time when the report has `elapsed_s`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=default) + "\n")
    elapsed = f"{report['elapsed_s']} s; " if "elapsed_s" in report else ""
    (console or Console()).print(f"[dim]{elapsed}results in {path}[/dim]")


__all__ = [
    "RESULTS",
    "arguments",
    "console",
    "cpu_model",
    "load_average",
    "machine",
    "nats_server_version",
    "paired_ratio",
    "percentile",
    "report",
    "write_report",
]
