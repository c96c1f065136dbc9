"""Chaos benchmark: the fault scenarios of tests/faults/ in one go, with what each did to Swarm.

    .venv/bin/python bench/chaos.py [--quick] [--trials N] [--scenario NAME ...] [--json PATH]

Each scenario builds its own real processes (nats-server, PostgreSQL, three Hive replicas, and
where agents are involved the scheduler and a pod), keeps work flowing, injects one fault and
audits the log afterwards (tests/faults/scenarios.py):

* nats-kill: SIGKILL of nats-server mid-burst, restarted on its port and store;
* postgres-kill: SIGKILL of PostgreSQL while an agent writes vector memory, restarted;
* leader-pause: SIGSTOP of the Hive leader for longer than its election timeout, then SIGCONT;
* leader-partition: the Hive leader's Raft link cut (network namespaces; skipped where the
  machine does not allow them), then restored.

Per scenario it prints commands sent, outcomes missing and duplicated, events duplicated,
recovery (fault -> first command accepted after it; for the database, first successful write)
against the same run's raw baseline (the server back up, or Raft reporting a new leader),
whether the replicas agree, and every broken promise. Targets: 0 missing, 0 duplicated,
recovery p50 < 2 s. `--quick` is one small trial of each, for the smoke test.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common
from tests.faults.harness import ScenarioResult
from tests.faults.scenarios import SCENARIOS, Load, Unavailable

TARGET_RECOVERY_P50_S = 2.0
QUICK = Load(warmup=30, hold_s=1.5, after_s=1.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _common.arguments("chaos", __doc__, raw=True)
    parser.add_argument("--quick", action="store_true", help="one small trial of each scenario")
    parser.add_argument("--trials", type=int, default=3, help="runs of each scenario")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run only this scenario (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.trials = 1
    return args


async def run_one(name: str, load: Load) -> ScenarioResult | str:
    """The scenario's result, or why it could not run here."""
    with tempfile.TemporaryDirectory(prefix=f"swarm-chaos-{name}-") as tmp:
        try:
            return await SCENARIOS[name](Path(tmp), load)
        except Unavailable as exc:
            return f"skipped: {exc}"


def p50(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def summarize(name: str, runs: list[ScenarioResult]) -> dict[str, Any]:
    return {
        "scenario": name,
        "title": runs[0].scenario,
        "trials": len(runs),
        "commands_sent": sum(r.commands_sent for r in runs),
        "outcomes_missing": sum(r.outcomes_missing for r in runs),
        "outcomes_duplicated": sum(r.outcomes_duplicated for r in runs),
        "events_duplicated": sum(r.events_duplicated for r in runs),
        "recovery_p50_s": p50([r.recovery_s for r in runs]),
        "recovery_max_s": max(
            (r.recovery_s for r in runs if r.recovery_s is not None), default=None
        ),
        "baseline_p50_s": p50([r.baseline_s for r in runs]),
        "replicas_agree": all(r.replicas_agree for r in runs),
        "violations": sorted({v for r in runs for v in r.violations}),
        "ok": all(r.ok for r in runs),
        "runs": [r.to_json() for r in runs],
    }


def table(summaries: list[dict[str, Any]], skipped: dict[str, str]) -> Table:
    out = Table(title="Chaos: faults injected into a running Swarm (same run, same machine)")
    columns = (
        "scenario",
        "trials",
        "commands",
        "missing",
        "duplicated",
        "dup events",
        "recovery p50 s",
        "raw p50 s",
        "replicas agree",
        "ok",
    )
    for col in columns:
        out.add_column(col, justify="left" if col == "scenario" else "right")

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for s in summaries:
        out.add_row(
            s["scenario"],
            str(s["trials"]),
            str(s["commands_sent"]),
            str(s["outcomes_missing"]),
            str(s["outcomes_duplicated"]),
            str(s["events_duplicated"]),
            fmt(s["recovery_p50_s"]),
            fmt(s["baseline_p50_s"]),
            "yes" if s["replicas_agree"] else "NO",
            "yes" if s["ok"] else "NO",
        )
    for name, reason in skipped.items():
        out.add_row(name, "0", *(["-"] * 7), reason)
    return out


async def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    load_at_start = _common.load_average()
    # The faults make this process's NATS client warn on every reconnect attempt; the table
    # says what they did.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    # Wide enough for the table when the output is a file or a pipe (rich's default is 80).
    console = _common.console(width=130)
    load = QUICK if args.quick else Load()
    chosen = args.scenario or list(SCENARIOS)
    runs: dict[str, list[ScenarioResult]] = {name: [] for name in chosen}
    skipped: dict[str, str] = {}
    began = time.monotonic()
    for trial in range(args.trials):
        for name in chosen:
            if name in skipped:
                continue
            with console.status(f"{name}, trial {trial + 1}/{args.trials}"):
                outcome = await run_one(name, load)
            if isinstance(outcome, str):
                skipped[name] = outcome
            else:
                runs[name].append(outcome)
    summaries = [summarize(name, found) for name, found in runs.items() if found]
    console.print(table(summaries, skipped))
    for s in summaries:
        for violation in s["violations"]:
            console.print(f"[red]{s['scenario']}[/]: {violation}")

    recoveries = [r.recovery_s for found in runs.values() for r in found]
    overall = p50(recoveries)
    missing = sum(s["outcomes_missing"] for s in summaries)
    duplicated = sum(s["outcomes_duplicated"] + s["events_duplicated"] for s in summaries)
    met = {
        "no_missing": missing == 0,
        "no_duplicates": duplicated == 0,
        "recovery_p50": overall is not None and overall < TARGET_RECOVERY_P50_S,
    }
    console.print(
        f"recovery p50 over all runs: {overall} s (target < {TARGET_RECOVERY_P50_S:g} s); "
        f"missing {missing}, duplicated {duplicated}"
    )
    result = {
        **_common.report(
            "chaos",
            {
                "quick": args.quick,
                "trials": args.trials,
                "scenarios": chosen,
                "load": {
                    "warmup": load.warmup,
                    "batch": load.batch,
                    "interval_s": load.interval,
                    "hold_s": load.hold_s,
                    "after_s": load.after_s,
                },
            },
            load_at_start,
        ),
        "scenarios": summaries,
        "skipped": skipped,
        "recovery_p50_s": overall,
        "targets": {
            "outcomes_missing": 0,
            "duplicates": 0,
            "recovery_p50_s": TARGET_RECOVERY_P50_S,
        },
        "met": met,
        "elapsed_s": round(time.monotonic() - began, 1),
    }
    _common.write_report(args.json, result, console, default=str)


if __name__ == "__main__":
    asyncio.run(main())
