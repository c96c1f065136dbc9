"""Security benchmark: what signing commands and NATS permissions cost, each against the same
run without them.

    .venv/bin/python bench/security.py [--commands N] [--trials N] [--json PATH]

Rows, each a paired ratio over `--trials` alternating repeats (every repeat has its own
nats-server and Hive, so each measures from the same empty start):

* commands/s end to end (publish to outcome on the log, one Hive replica), signed by the sender's
  nkey and verified by a Hive given the stack's principals (`swarm.kernel.signing`, rule
  `signature`), against the same commands unsigned to a Hive that takes any. Target >= 0.8x.
* raw JetStream publishes/s by a principal with a pod's permissions (deny lists on the subjects
  it publishes on: `swarm.devstack.principals`), against the same on a server without
  authorization. The raw baseline of the row above.

Mesh request/reply with the sender's identity verified (issue 13, item 4) is not built yet: no
row for it.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.table import Table

from bench import _common
from bench.hive import decided_per_second, publish_raw
from schemas import command, commands, names
from schemas.specs import Quota
from services.hive.testing import HiveCluster
from swarm.devstack.embedded import AUTH_FILE, EmbeddedNats
from swarm.devstack.principals import issue, write_authorization
from swarm.kernel import env
from swarm.kernel.eventlog import AppendRequest, EventLog

CHUNK = 500
TARGET = 0.8


def namespaces(n: int, tag: str) -> list[AppendRequest]:
    """`n` commands that each write one event (a namespace) and an outcome."""
    return [
        AppendRequest.of(
            command(
                commands.CreateNamespace(name=f"{tag}-{i}", quota=Quota()),
                source="bench",
                identity="user:bench",
            )
        )
        for i in range(n)
    ]


async def commands_per_second(root: Path, n: int, *, signed: bool) -> float:
    """One Hive replica; `signed`: it takes only the principals' signed commands, and the
    client signs with the owner's key."""
    keys = root / "principals"
    (admin,) = issue(keys, [("admin", "admin")])
    server = EmbeddedNats(root / "nats")
    url = server.start()
    extra = {env.HIVE_PRINCIPALS_FILE: str(keys / "principals.json")} if signed else {}
    cluster = HiveCluster(url, root / "hive", size=1, env=extra)
    (root / "hive").mkdir(parents=True, exist_ok=True)
    cluster.start()
    try:
        log = await EventLog.connect(url, credentials=admin.seed_file if signed else None)
        if not signed:
            log = EventLog(log.nc)  # the same connection, signing nothing
        await cluster.leader(log.nc, timeout=60)
        requests = namespaces(n, "s" if signed else "u")
        rate, start_seq = await decided_per_second(log, requests)
        rejected = await _rejections(log, start_seq)
        if rejected:
            raise RuntimeError(f"{rejected} commands were rejected: the run measures nothing")
        await log.nc.close()
        return rate
    finally:
        cluster.stop()
        server.stop()


async def _rejections(log: EventLog, start_seq: int) -> int:
    reader = await log.reader(
        names.STREAM_EVENTS,
        start_seq=start_seq,
        subjects=[f"{names.EVENTS_PREFIX}.{names.OUTCOME_AGGREGATE}.*.{names.OUTCOME_REJECTED}"],
    )
    try:
        return len(await reader.fetch(10_000, timeout=0.5))
    finally:
        await reader.close()


async def raw_publish(root: Path, n: int, *, authorised: bool) -> float:
    """Pipelined JetStream publishes; `authorised`: as a service, on a server that admits the
    stack's principals alone, with their permissions."""
    server = EmbeddedNats(root / "nats")
    credentials = None
    if authorised:
        # A service (deny lists: the log's removal, events, secrets): a pod's allow lists take
        # Swarm's own subjects alone, and the bench publishes on a stream of its own.
        principals = issue(root / "principals", [("admin", "admin"), ("scheduler", "service")])
        (root / "nats").mkdir(parents=True, exist_ok=True)
        write_authorization(root / "nats" / AUTH_FILE, principals)
        server.authorize = True
        credentials = principals[1].seed_file
    url = server.start()
    try:
        log = await EventLog.connect(url, ensure=False, credentials=credentials)
        rate = await publish_raw(log, n, namespaces(1, "raw")[0].body)
        await log.nc.close()
        return rate
    finally:
        server.stop()


async def main() -> None:
    parser = _common.arguments("security", __doc__, raw=True)
    parser.add_argument("--commands", type=int, default=3000)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    load_at_start = _common.load_average()
    console = _common.console()
    rows: dict[str, dict[str, list[float]]] = {
        "commands": {"with": [], "without": []},
        "publish": {"with": [], "without": []},
    }
    with tempfile.TemporaryDirectory(prefix="swarm-bench-security-") as tmp:
        root = Path(tmp)
        for trial in range(args.trials):
            # Alternating which goes first, so a drift in the machine's load weighs on both.
            order = (True, False) if trial % 2 == 0 else (False, True)
            for on in order:
                where = root / f"cmd-{trial}-{on}"
                with console.status(f"trial {trial + 1}: commands, signed={on}"):
                    rows["commands"]["with" if on else "without"].append(
                        await commands_per_second(where, args.commands, signed=on)
                    )
            for on in order:
                where = root / f"raw-{trial}-{on}"
                with console.status(f"trial {trial + 1}: raw publishes, permissions={on}"):
                    rows["publish"]["with" if on else "without"].append(
                        await raw_publish(where, args.commands * 4, authorised=on)
                    )

    results: dict[str, Any] = {}
    table = Table(title="Security benchmark (paired, same run, same machine)")
    for col in ("measure", "with", "without", "ratio", "target", "met"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    labels = {
        "commands": "commands/s end to end, signed + verified vs unsigned",
        "publish": "JetStream publish/s as a pod with permissions vs no auth",
    }
    for key, label in labels.items():
        with_, without = rows[key]["with"], rows[key]["without"]
        ratio = _common.paired_ratio(with_, without)
        target = TARGET if key == "commands" else None
        met = None if target is None else ratio >= target
        results[key] = {
            "with_per_s": with_,
            "without_per_s": without,
            "with_median_per_s": statistics.median(with_),
            "without_median_per_s": statistics.median(without),
            "ratio": ratio,
            "target": target,
            "met": met,
        }
        table.add_row(
            label,
            f"{statistics.median(with_):,.0f}",
            f"{statistics.median(without):,.0f}",
            f"{ratio:.2f}",
            f">= {target}" if target is not None else "",
            "" if met is None else ("yes" if met else "NO"),
        )
    console.print(table)
    console.print("mesh request/reply with identity verification: not built yet (no row)")
    report = _common.report("security", vars(args) | {"json": str(args.json)}, load_at_start)
    report["results"] = results
    _common.write_report(args.json, report, console)


if __name__ == "__main__":
    asyncio.run(main())
