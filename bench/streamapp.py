"""What the StreamApp benchmarks (bench/streaming.py, bench/scheduler_intake.py) share: a timed
run of either path over the same events, and the two rows they report: the plain pull loop's,
then the faust path's with its ratio to plain."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench import _common


@dataclass(frozen=True, slots=True)
class Run:
    events_per_s: float
    cpu_us: float
    start_s: float = 0.0
    #: Starting again on the tables the run left: recovery from the changelog.
    recover_s: float = 0.0


def rows(
    common: Mapping[str, Any],
    plain: tuple[str, Sequence[Run]],
    faust: tuple[str, Sequence[Run]],
    *,
    target_ratio: float,
    timings: Sequence[str] = ("start_s",),
) -> list[dict[str, Any]]:
    """The plain row, then the faust one, each the median of its (path, runs) and both starting
    with `common`; the faust row has the median of each of its `timings` (fields of `Run`)."""
    (plain_path, plain_runs), (faust_path, faust_runs) = plain, faust
    ratio = _common.paired_ratio(
        [f.events_per_s for f in faust_runs], [p.events_per_s for p in plain_runs]
    )

    def row(path: str, runs: Sequence[Run], timings: Sequence[str] = ()) -> dict[str, Any]:
        return {
            **common,
            "path": path,
            "events_per_s": round(statistics.median(r.events_per_s for r in runs), 1),
            "cpu_us_per_event": round(statistics.median(r.cpu_us for r in runs), 2),
            **{t: round(statistics.median(getattr(r, t) for r in runs), 3) for t in timings},
            "runs": [round(r.events_per_s, 1) for r in runs],
        }

    return [
        row(plain_path, plain_runs),
        {
            **row(faust_path, faust_runs, timings),
            "ratio": round(ratio, 3),
            "target_ratio": target_ratio,
            "met": ratio >= target_ratio,
        },
    ]
