"""CLI start benchmark: how long a `swarm` command takes, as a whole process, against
`python -c pass` measured in the same run on the same machine.

    .venv/bin/python bench/cli.py [--runs N] [--quick] [--no-stack] [--json PATH]

Cases, each run `--runs` times as its own process (stdout and stderr thrown away):

* without a stack: `swarm --help`, `swarm agent ls --help`, `swarm status` (it answers that no
  stack runs, exit 1) and `swarm agent ls` (it cannot reach NATS, exit 4): what every call pays
  before it does anything. Target: p50 under 300 ms.
* with a stack (`swarm up --detach` in a temporary data dir, stopped at the end): `swarm status`
  (reads the state file, probes the servers, asks the Hive) and `swarm agent ls` (one query to
  the Hive). Target: p50 under 500 ms.

The baseline `python -c pass` runs alternately with each case, so load from other processes on
the shared cores hits both alike; its own p50 is shown per row. Wall times are what the targets
are about; the CPU time (user + system, from the kernel's accounting of the finished child) is
shown beside them because load on the machine hardly moves it.

The project's modules are compiled to bytecode first, as pip does for an installed package: with
`PYTHONDONTWRITEBYTECODE` set (this machine's default environment) an editable checkout would
otherwise compile every module it imports on every call, ~60 ms more per `swarm` call here,
which no installed copy pays.

Every command runs in the temporary directory with `XDG_STATE_HOME` pointed into it and no
`SWARM_*` variable from the caller's environment, so the bench neither finds nor records the
user's own stack.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from bench import _common

#: p50 targets in milliseconds, without and with a running stack.
TARGET_MS = {False: 300.0, True: 500.0}
#: The cases without a stack, and with one: (label, arguments after `swarm`).
COLD: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("swarm --help", ("--help",)),
    ("swarm agent ls --help", ("agent", "ls", "--help")),
    ("swarm status", ("status",)),
    ("swarm agent ls", ("agent", "ls")),
)
WITH_STACK: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("swarm status", ("status",)),
    ("swarm agent ls", ("agent", "ls")),
)


#: The project's packages, compiled before the runs (see the module docstring).
PACKAGES = ("swarm", "schemas", "services", "runtime")


def compile_bytecode() -> None:
    root = Path(__file__).resolve().parents[1]
    for package in PACKAGES:
        compileall.compile_dir(root / package, quiet=1)


def swarm_command() -> list[str]:
    """The `swarm` script installed beside this interpreter, as a user runs it."""
    script = shutil.which("swarm", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "swarm.cli.app"]


@dataclass(frozen=True, slots=True)
class Run:
    wall_s: float
    cpu_s: float
    exit_code: int


def run_once(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> Run:
    """One process from start to exit: its wall time and, from `wait4`, its CPU time."""
    began = time.perf_counter()
    proc = subprocess.Popen(
        list(argv), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting
    return Run(wall, usage.ru_utime + usage.ru_stime, proc.returncode)


@dataclass
class Row:
    label: str
    with_stack: bool
    runs: list[Run] = field(default_factory=list)
    baseline: list[Run] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        wall = [r.wall_s * 1000 for r in self.runs]
        base = [r.wall_s * 1000 for r in self.baseline]
        p50 = _common.percentile(wall, 50)
        target = TARGET_MS[self.with_stack]
        return {
            "command": self.label,
            "stack": self.with_stack,
            "p50_ms": round(p50, 1),
            "p90_ms": round(_common.percentile(wall, 90), 1),
            "cpu_p50_ms": round(_common.percentile([r.cpu_s * 1000 for r in self.runs], 50), 1),
            "baseline_p50_ms": round(_common.percentile(base, 50), 1),
            "baseline_cpu_p50_ms": round(
                _common.percentile([r.cpu_s * 1000 for r in self.baseline], 50), 1
            ),
            "over_baseline_p50_ms": round(
                statistics.median(a - b for a, b in zip(wall, base, strict=True)), 1
            ),
            "target_ms": target,
            "met": p50 < target,
            "exit_codes": sorted({r.exit_code for r in self.runs}),
            "runs_ms": [round(w, 1) for w in wall],
        }


def measure(
    label: str,
    args: Sequence[str],
    *,
    with_stack: bool,
    runs: int,
    cwd: Path,
    env: dict[str, str],
) -> Row:
    """`runs` runs of the case, each followed by one of the baseline; one unrecorded warm-up
    of each first, so both read their files from the page cache."""
    row = Row(label, with_stack)
    command = [*swarm_command(), *args]
    baseline = [sys.executable, "-c", "pass"]
    run_once(command, cwd, env)
    run_once(baseline, cwd, env)
    for _ in range(runs):
        row.runs.append(run_once(command, cwd, env))
        row.baseline.append(run_once(baseline, cwd, env))
    return row


def clean_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env["XDG_STATE_HOME"] = str(root / "state")
    env["COLUMNS"] = "100"
    return env


@contextmanager
def running_stack(root: Path, env: dict[str, str], timeout: float) -> Iterator[None]:
    """A stack started with `swarm up --detach` in `root/.swarm` (the cwd default), ready to
    answer `swarm agent ls`, and stopped on the way out whatever happened."""
    swarm = swarm_command()
    up = subprocess.run(
        [*swarm, "up", "--detach", "--timeout", str(timeout)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        check=False,
    )
    try:
        if up.returncode != 0:
            raise RuntimeError(f"swarm up --detach failed:\n{up.stdout}{up.stderr}")
        # Ready means the servers answer; the Hive may still be electing itself.
        deadline = time.monotonic() + timeout
        while run_once([*swarm, "agent", "ls"], root, env).exit_code != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Hive did not answer `swarm agent ls` in {timeout:g} s")
            time.sleep(0.5)
        yield
    finally:
        subprocess.run(
            [*swarm, "down"],
            cwd=root,
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )


def print_table(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table(
        title="CLI start (same run, same machine; wall ms unless marked cpu; "
        "baseline: python -c pass)"
    )
    columns = (
        "command",
        "stack",
        "p50",
        "p90",
        "cpu p50",
        "baseline p50",
        "over baseline",
        "target",
        "met",
    )
    for col in columns:
        left = col == "command"
        table.add_column(col, justify="left" if left else "right", no_wrap=left)
    for r in rows:
        table.add_row(
            r["command"],
            "yes" if r["stack"] else "no",
            f"{r['p50_ms']:.0f}",
            f"{r['p90_ms']:.0f}",
            f"{r['cpu_p50_ms']:.0f}",
            f"{r['baseline_p50_ms']:.0f}",
            f"+{r['over_baseline_p50_ms']:.0f}",
            f"< {r['target_ms']:.0f}",
            "yes" if r["met"] else "[red]no[/]",
        )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="runs of each case (default 20)")
    parser.add_argument(
        "--quick", action="store_true", help="1 run of each case: a smoke test, not a figure"
    )
    parser.add_argument("--no-stack", action="store_true", help="skip the cases with a stack")
    parser.add_argument(
        "--stack-timeout", type=float, default=180.0, help="seconds to wait for the stack"
    )
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "cli.json")
    args = parser.parse_args(argv)
    load_at_start = _common.load_average()
    runs = 1 if args.quick else args.runs
    if runs < 1:
        parser.error("--runs must be at least 1")
    console = Console()
    compile_bytecode()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="swarm-bench-cli-") as tmp:
        root = Path(tmp)
        env = clean_env(root)
        for label, cmd in COLD:
            with console.status(f"{label} (no stack) …"):
                rows.append(measure(label, cmd, with_stack=False, runs=runs, cwd=root, env=env))
        if not args.no_stack:
            console.print("starting a stack (swarm up --detach) …")
            with running_stack(root, env, args.stack_timeout):
                for label, cmd in WITH_STACK:
                    with console.status(f"{label} (with a stack) …"):
                        rows.append(
                            measure(label, cmd, with_stack=True, runs=runs, cwd=root, env=env)
                        )
                console.print("stopping the stack (swarm down) …")
    figures = [r.figures() for r in rows]
    print_table(console, figures)
    report = {
        **_common.report(
            "cli", {"runs": runs, "quick": args.quick, "stack": not args.no_stack}, load_at_start
        ),
        "start": figures,
    }
    _common.write_report(args.json, report, console)


if __name__ == "__main__":
    main()
